"""Evaluations of attribution results (docs/evaluations.md): pure functions on arrays, run at scale
over a job's Parquet parts. The pure functions themselves live in ``pipeline.metrics``; these are the
runners that read outputs (``pipeline.io.parts``) and shards and run them.

- ``pointing_run``: the pointing game (``metrics.pointing_game``, ``metrics.ground_truth``) as a
  per-part task map; ``difficult``: EBP's difficult subset; ``pointing_table``: the result
  tables. ``python -m jobs.pointing_game`` is the CLI.
- ``deletion_task``: RISE's deletion / insertion (``metrics.deletion_insertion``) as a per-shard
  task on the job's actors; ``deletion_table``: the per-method summary.
  ``python -m jobs.deletion_insertion``.
- ``area_growth``: per-class a* histogram, share reaching v >= 1, mean v_a per area, streamed
  over the parts. ``python -m jobs.area_growth``.
- ``randomization``: layers, stages and the randomized attribution task; ``sanity_run``: the
  stages through the driver, compared with ``metrics.similarity``, and the table.
  ``python -m jobs.sanity_check``. ``mprt_task``: eMPRT / sMPRT's per-shard tasks (the denoised
  attribution, the per-row scores, ``metrics.mprt``); ``mprt_run``: them through the driver and
  the per-method table (``jobs.sanity_check --emprt / --smprt``).
"""
