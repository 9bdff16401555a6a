"""Evaluations of attribution results (docs/evaluations.md): pure functions on arrays, run at scale
over a job's Parquet parts.

- ``pointing_game``: TorchRay's pointing-game protocol (point, hit, tally); ``ground_truth``:
  the (image, class) masks from a sample's annotations; ``coco_masks``: COCO polygons and RLE;
  ``difficult``: EBP's difficult subset; ``pointing_run``: the per-part task map;
  ``pointing_table``: the result tables. ``python -m jobs.pointing_game`` is the CLI.
- ``deletion_insertion``: RISE's deletion / insertion curves and AUCs, batched over (image,
  step) pairs; ``deletion_task``: the per-shard task on the job's actors; ``deletion_table``:
  the per-method summary. ``python -m jobs.deletion_insertion``.
- ``area_growth``: per-class a* histogram, share reaching v >= 1, mean v_a per area, streamed
  over the parts. ``python -m jobs.area_growth``.
- ``similarity``: Spearman, SSIM and HOG of two maps as the sanity checks compare them;
  ``randomization``: layers, stages and the randomized attribution task; ``sanity_run``: the
  stages through the driver and the table. ``python -m jobs.sanity_check``.
"""
