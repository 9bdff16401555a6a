"""``python -m jobs.make_shards --from voc|coco|imagefolder|parquet|hf <path or URL> --out <uri>``

Writes WebDataset shards from a dataset in the layout users have: PASCAL VOC (``VOCdevkit/VOC2007``,
``--split test``), COCO (an image folder plus ``--annotations instances_val2014.json``), an
ImageFolder tree, Parquet files (a glob; ``--image-column`` / ``--key-column``, img2dataset's
``jpg`` / ``key`` by default) or a Hugging Face datasets folder (``image`` / ``label``).
Each sample: the image, ``.cls`` (its first label) and ``.json`` (every label
and the annotations: VOC boxes with difficult flags, COCO instance polygons/RLE). Resumable:
finished shards are kept, a half-written one is written again.

Exit codes: 0 done; 1 a sample or the output could not be read/written; 2 bad command line, or
an output made with other settings.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.datasets import LAYOUTS, ShardSettingsError, coco_entries, imagefolder_entries, voc_entries, write_dataset_shards
from pipeline.datasets.tables import table_entries
from pipeline.storage import OutputError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.make_shards", description=__doc__.split("\n\n")[1])
    p.add_argument("--from", dest="layout", required=True, choices=LAYOUTS, help="the dataset's layout")
    p.add_argument("source", help="dataset folder: local path or fsspec URL")
    p.add_argument("--out", required=True, help="where the shards go (local path or fsspec URL)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--prefix", default=None, help="shard file name prefix (default: the layout, e.g. voc-000000.tar)")
    p.add_argument("--split", default=None, help="VOC: ImageSets/Main/<split>.txt (default: every annotation)")
    p.add_argument("--annotations", default=None, help="COCO: instances JSON (default ../annotations/instances_<name>.json)")
    p.add_argument("--image-column", default="auto", help="parquet / hf: the image bytes column (default jpg / image)")
    p.add_argument("--key-column", default="auto", help="parquet / hf: the key column (default key / row numbers)")
    p.add_argument("--workers", type=int, default=8, help="threads loading samples (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.shard_size < 1:
        print(f"error: --shard-size must be >= 1, got {args.shard_size}", file=sys.stderr)
        return 2
    source = {"layout": args.layout, "path": args.source}
    try:
        if args.layout == "voc":
            samples, classes = voc_entries(args.source, args.split)
            source["split"] = args.split
        elif args.layout == "coco":
            samples, classes = coco_entries(args.source, args.annotations)
            source["annotations"] = args.annotations
        elif args.layout in ("parquet", "hf"):
            fmt = "parquet" if args.layout == "parquet" else "hf_datasets"
            samples, classes = table_entries(args.source, fmt, args.image_column, args.key_column)
            source.update(image_column=args.image_column, key_column=args.key_column)
        else:
            samples, classes = imagefolder_entries(args.source)
        source["classes"] = classes
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = write_dataset_shards(
            samples, args.out, shard_size=args.shard_size, prefix=args.prefix or args.layout, source=source,
            workers=args.workers, progress=not args.no_progress,
        )
    except ShardSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OutputError, ValueError) as exc:  # an unreadable sample, an unwritable output
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{report.samples} samples, {len(classes)} classes in {len(report.shards)} shards "
          f"({len(report.written)} written, {len(report.skipped)} already there)")
    print(f"input.shards: {report.pattern()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
