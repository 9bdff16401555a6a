"""Progress reporting: plain log lines when stdout is not a terminal, a tqdm bar when it is."""

from __future__ import annotations

import io

from pipeline.progress import Progress


def test_log_lines_without_a_tty() -> None:
    stream = io.StringIO()
    p = Progress(4, initial=1, stream=stream, tty=False, interval_s=0.0)
    p.tick()  # interval passed: one line
    p.shard_done(images=8)
    p.shard_retried()
    p.shard_failed()
    assert p.eta_s() is not None and p.eta_s() >= 0
    p.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("[attribute] shards 2/4 done, 1 failed, 1 retries | 8 images,")
    assert "images/s" in lines[-1] and "ETA" in lines[-1]


def test_quiet_between_intervals_and_bar_on_a_tty() -> None:
    stream = io.StringIO()
    p = Progress(2, stream=stream, tty=False, interval_s=3600)
    p.tick()
    assert stream.getvalue() == ""  # nothing until the interval or the end
    p.close()
    assert stream.getvalue().count("\n") == 1

    tty = io.StringIO()
    with Progress(2, stream=tty, tty=True) as bar:
        bar.shard_done(images=3)
    assert "1/2" in tty.getvalue() and "3 img" in tty.getvalue()
