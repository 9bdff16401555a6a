"""Evaluations of attribution results (SPEC section 8): pure functions on arrays, run at scale
over a job's Parquet parts.

- ``pointing_game``: TorchRay's pointing-game protocol (point, hit, tally); ``ground_truth``:
  the (image, class) masks from a sample's annotations; ``coco_masks``: COCO polygons and RLE;
  ``difficult``: EBP's difficult subset; ``pointing_run``: the per-part task map;
  ``pointing_table``: the result tables. ``python -m jobs.pointing_game`` is the CLI.
"""
