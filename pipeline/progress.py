"""Progress of a job: a tqdm bar on a terminal, a plain log line every ``interval_s`` otherwise.

Under ``ray job submit`` (or any redirect) stdout is not a TTY and a bar's carriage returns would
fill the log with garbage, so the same numbers are printed as one line now and then and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts shards (``total``, of which ``initial`` already done by an earlier run), images,
    failures; shows shards, images, images/s (this run), failures and ETA.

    ``tty``: force the bar (True) or the log lines (False); None = ``stream.isatty()``.
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval_s: float = 10.0,
        desc: str = "attribute",
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.total, self.initial = total, initial
        self.done, self.failed, self.images, self.retries = initial, 0, 0, 0
        self.interval_s, self.desc = interval_s, desc
        self.start = self._last_log = time.monotonic()
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = (
            tqdm(total=total, initial=initial, desc=desc, unit="shard", file=self.stream, dynamic_ncols=True) if tty else None
        )
        self._closed = False

    # -- counters ---------------------------------------------------------------------------------

    def shard_done(self, images: int) -> None:
        self.done += 1
        self.images += images
        if self._bar is not None:
            self._bar.update(1)
        self._refresh()

    def shard_failed(self) -> None:
        """A shard failed for good (quarantined)."""
        self.failed += 1
        if self._bar is not None:
            self._bar.update(1)
        self._refresh()

    def shard_retried(self) -> None:
        self.retries += 1
        self._refresh()

    # -- derived numbers --------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at this run's shard rate; None before the first shard finishes."""
        finished = self.done - self.initial + self.failed
        left = self.total - self.done - self.failed
        if left <= 0:
            return 0.0
        if finished <= 0:
            return None
        return self.elapsed / finished * left

    def line(self) -> str:
        """One plain progress line."""
        return (
            f"[{self.desc}] shards {self.done}/{self.total} done, {self.failed} failed, {self.retries} retries | "
            f"{self.images} images, {self.images_per_s:.2f} images/s | "
            f"elapsed {_fmt_seconds(self.elapsed)}, ETA {_fmt_seconds(self.eta_s())}"
        )

    # -- output -----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{self.images} img, {self.images_per_s:.2f} img/s, {self.failed} failed, {self.retries} retries",
                refresh=True,
            )

    def tick(self) -> None:
        """Call often: prints the log line when ``interval_s`` has passed (no-op with a bar)."""
        if self._bar is None and time.monotonic() - self._last_log >= self.interval_s:
            self._log()

    def note(self, text: str) -> None:
        """A one-off line (e.g. why the job is waiting), above the bar when there is one."""
        if self._bar is not None:
            self._bar.write(f"[{self.desc}] {text}", file=self.stream)
        else:
            print(f"[{self.desc}] {text}", file=self.stream, flush=True)

    def _log(self) -> None:
        self._last_log = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """The final line (or the bar's last state)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._refresh()
            self._bar.close()
        else:
            self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
