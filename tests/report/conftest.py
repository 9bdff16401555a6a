"""The report's tests run real jobs on the session's Ray cluster (the pipeline tests' fixture)."""

from tests.pipeline.conftest import ray_cluster  # noqa: F401  (session fixture)
