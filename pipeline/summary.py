"""A run's account: each shard's fate (``ShardState``) and the job's summary (``JobSummary``),
which the driver fills in, writes to the manifest and prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.storage import redact_url


@dataclass(slots=True)  # one per shard: 100,000 of them in a large job
class ShardState:
    """One shard's fate. ``status``: ``pending`` (not run), ``done``, ``failed`` (quarantined).
    ``resumed``: done by an earlier run (its numbers come from the done-marker)."""

    url: str
    status: str = "pending"
    attempts: int = 0
    rows: int = 0
    errors: int = 0
    images: int = 0
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "status": self.status,
            "attempts": self.attempts,
            "rows": self.rows,
            "errors": self.errors,
            "images": self.images,
            "seconds": round(self.seconds, 3),
        }
        if self.error is not None:
            entry["error"] = self.error
        return entry


@dataclass
class JobSummary:
    """What a run did. ``seconds`` and ``images_per_s`` cover this run only; ``shards`` all of the
    job's shards (including those resumed from an earlier run)."""

    output_uri: str
    config_hash: str
    shards: dict[str, ShardState]
    seconds: float
    workers: int = 0
    retries: int = 0
    replaced_workers: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    write_error: str | None = None  # the final index/manifest write failed (the shards are committed)

    def _with(self, status: str) -> list[ShardState]:
        return [s for s in self.shards.values() if s.status == status]

    @property
    def done(self) -> list[ShardState]:
        return self._with("done")

    @property
    def failed(self) -> list[ShardState]:
        return self._with("failed")

    @property
    def pending(self) -> list[ShardState]:
        return self._with("pending")

    @property
    def ok(self) -> bool:
        """Every shard is done."""
        return len(self.done) == len(self.shards)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok and self.write_error is None else 1

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.done)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.done)

    @property
    def images_this_run(self) -> int:
        return sum(s.images for s in self.done if not s.resumed)

    @property
    def images_per_s(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 else 0.0

    def failures(self) -> dict[str, str]:
        """Shard URL (secrets redacted) -> why it failed, for the quarantined shards."""
        return {redact_url(s.url): s.error or "unknown error" for s in self.failed}

    def report(self) -> str:
        """A few human-readable lines: counts, throughput, and every failed shard with its reason."""
        resumed = sum(1 for s in self.done if s.resumed)
        lines = [
            f"output: {self.output_uri}",
            f"shards: {len(self.done)}/{len(self.shards)} done ({resumed} from an earlier run), "
            f"{len(self.failed)} failed, {len(self.pending)} not run",
            f"rows: {self.rows} ({self.errors} error rows)",
            f"this run: {self.images_this_run} images in {self.seconds:.1f} s = {self.images_per_s:.2f} images/s "
            f"on {self.workers} workers ({self.retries} retries, {self.replaced_workers} workers replaced)",
        ]
        for url, reason in self.failures().items():
            lines.append(f"FAILED {url}: {reason}")
        if self.pending:
            lines.append(f"{len(self.pending)} shards not run: run the job again to resume")
        if self.write_error is not None:
            lines.append(f"the manifest was not written ({self.write_error}): run the job again to write it")
        return "\n".join(lines)


def resumed_states(urls: list[str], done: dict[str, dict[str, Any]]) -> dict[str, ShardState]:
    """Each shard's state, ``done`` for those with a marker (``done`` is emptied as it is read:
    the markers are not kept beside the states)."""
    states = {}
    for url in urls:
        marker = done.pop(redact_url(url), None)  # markers hold the URL without a signed query string
        if marker is None:
            states[url] = ShardState(url)
            continue
        states[url] = ShardState(
            url,
            status="done",
            attempts=int(marker.get("attempts") or 1),
            rows=int(marker.get("rows") or 0),
            errors=int(marker.get("errors") or 0),
            images=int(marker.get("images") or 0),
            seconds=float(marker.get("seconds") or 0.0),
            resumed=True,
        )
    done.clear()
    return states
