"""Reading ahead: a shard's samples decoded and preprocessed in a background thread, a bounded
queue ahead of the consumer, so the engine never waits on I/O.

A sample that cannot be used (undecodable image, no image, bad label) becomes an ``Item`` with
``error`` set; a damaged shard raises ``ShardReadError`` at the consumer, after the items read
before the damage.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.geometry import Geometry
from pipeline.images import MAX_PIXELS, check_resize, decode_image
from pipeline.models import Preprocess
from pipeline.shards import Sample, iter_samples
from pipeline.storage import Storage


@dataclass
class Item:
    """One sample, decoded and preprocessed (or with ``error`` set). ``x``: the model input
    float32 ``[3, h, w]``; ``index``: position in the shard (rows keep the shard's order)."""

    index: int
    key: str
    label: int | None = None
    labels: list[int] | None = None  # every class present (json 'labels'), for targets.mode: labels
    x: torch.Tensor | None = None
    geometry: Geometry | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


def read_items(
    shard_url: str,
    preprocess: Preprocess,
    label_key: str | None = "cls",
    storage: Storage = Storage(),
    max_pixels: int = MAX_PIXELS,
    reader: Callable[[str, Storage], Iterator[Sample]] | None = None,
) -> Iterator[Item]:
    """Stream a shard's samples as ``Item``s: decode + preprocess each image; a sample that
    cannot be used gets ``error`` instead of raising. A damaged shard raises ShardReadError
    (after yielding the samples before the damage). ``max_pixels``: the memory guard, on the
    decoded image and on the size preprocessing resizes it to (``pipeline.images``). ``reader``:
    the unit's samples for another input format (``pipeline.tables.sample_reader``; default: a tar)."""
    samples = reader(shard_url, storage) if reader else iter_samples(shard_url, storage, label_key)
    for index, sample in enumerate(samples):
        item = Item(index=index, key=sample.key, label=sample.label, labels=sample.labels)
        if sample.error is not None or sample.image_bytes is None:
            item.error = sample.error or "no image"
            yield item
            continue
        try:
            image = decode_image(sample.image_bytes, max_pixels)
            item.width, item.height = image.size
            check_resize(Geometry.of(*image.size, preprocess.resize, preprocess.crop), max_pixels)
            item.x, item.geometry = preprocess(image)
        except Exception as exc:  # decode_image raises ValueError; preprocessing anything else
            item.error = " ".join(str(exc).split()) or type(exc).__name__
        yield item


class Prefetcher:
    """Run an iterator in a background thread, ``maxsize`` items ahead, and iterate its items
    here. An exception in the producer is re-raised at the consumer, in order (after the items
    produced before it). ``close()`` stops the thread even if the consumer stops early."""

    def __init__(self, source: Iterator[Any], maxsize: int = 16) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="shard-prefetch", daemon=True)
        self._thread.start()

    def _put(self, message: tuple[str, Any]) -> bool:
        # A bounded put that gives up when the consumer has gone away (close()).
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed over to the consumer
            self._put(("error", exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            kind, value = self._queue.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
