"""Pure metrics: functions of arrays and tensors (the pointing game's point and hit, map
similarities, COCO masks, deletion / insertion curves, eMPRT / sMPRT, ground truth from a
sample's json). They import neither Ray nor the rest of ``pipeline`` (a test checks), so they
are tested and reused alone; the runners that read outputs and shards sit above, in ``pipeline.evaluation``."""
