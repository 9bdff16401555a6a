"""Datasets in the layouts users have (PASCAL VOC, COCO, ImageFolder) turned into WebDataset
shards: one reader per layout lists the samples (cheap: a key and how to load it), the writer
packs them into shards (``pipeline.datasets.writer``). ``python -m jobs.make_shards`` is the CLI.

Every sample's ``json`` member holds the annotations the evaluations need, in one format
(``pipeline.datasets.entry``): ``format``, ``image`` (the original file name), ``width``,
``height``, ``label`` (the first class), ``labels`` (every class present, sorted) and ``objects``.
"""

from pipeline.datasets.coco import coco_entries
from pipeline.datasets.entry import SourceSample
from pipeline.datasets.imagefolder import imagefolder_entries
from pipeline.datasets.voc import VOC_CLASSES, voc_entries
from pipeline.datasets.writer import ShardSettingsError, ShardWriteReport, write_dataset_shards

LAYOUTS = ("voc", "coco", "imagefolder", "parquet", "hf")

__all__ = [
    "LAYOUTS",
    "VOC_CLASSES",
    "ShardSettingsError",
    "ShardWriteReport",
    "SourceSample",
    "coco_entries",
    "imagefolder_entries",
    "voc_entries",
    "write_dataset_shards",
]
