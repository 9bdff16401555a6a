"""Pipeline fixtures: one real local Ray cluster per session, and a tiny job config.

The Ray cluster declares 2 logical GPUs on this CPU machine, so GPU actors are scheduled the way
they are on a GPU cluster (each gets CUDA_VISIBLE_DEVICES) while torch falls back to the CPU.
It depends on ``s3_server``: that fixture puts dummy AWS credentials in the environment, and Ray's
worker processes inherit the environment of the moment the cluster starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import pytest

from pipeline.config import JobConfig, ModelConfig, PreprocessingConfig
from pipeline.config_load import load_config

# Small enough that an engine call takes a fraction of a second on a loaded 2-core machine.
TINY = (
    "model.factory=tests.pipeline.factories:seeded_demo_model",
    "model.num_classes=4",
    "model.preprocessing.resize=null",
    "model.preprocessing.crop=32",
    "model.preprocessing.mean=[0.5,0.5,0.5]",
    "model.preprocessing.std=[0.2,0.2,0.2]",
    "targets.mode=label",
    "extremal.areas=[0.1,0.3]",
    "extremal.max_iter=5",
    "extremal.step=4",
    "extremal.sigma=8.0",
    "worker.batch_size=4",
    "cluster.num_actors=2",
    "cluster.num_gpus_per_actor=0",
    "cluster.num_cpus_per_actor=1",
    "cluster.max_retries=1",
    "cluster.retry_backoff_s=0.05",
    "cluster.device=auto",
)


def tiny_config(shards: str | Sequence[str], output_uri: str, *overrides: str) -> JobConfig:
    """A valid tiny job over ``shards`` writing to ``output_uri``; ``overrides`` win."""
    listed = shards if isinstance(shards, str) else "[" + ",".join(f"'{s}'" for s in shards) + "]"
    return load_config(None, [f"input.shards={listed}", f"output.uri={output_uri}", *TINY, *overrides])


@pytest.fixture
def job_config() -> Callable[..., JobConfig]:
    """``job_config(shards, output_uri, *overrides)``: see ``tiny_config``."""
    return tiny_config


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """A local Ray cluster for the whole session: 2 CPUs, 2 logical GPUs, no dashboard."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def model_section(**fields) -> ModelConfig:
    """The job's ``model`` section with the preprocessing fields given flat (``crop=200``); no
    downloads unless asked for (tests run offline)."""
    names = {f.name for f in dataclasses.fields(PreprocessingConfig)}
    pp = {k: fields.pop(k) for k in list(fields) if k in names}
    fields.setdefault("download_weights", False)
    return ModelConfig(**fields, preprocessing=PreprocessingConfig(**pp))


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny config's model, loaded as an actor loads it, with one torch thread (as an actor
    with one CPU gets: on a busy 2-core machine two threads wait on each other)."""
    import torch

    from pipeline.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(tiny_config("unused.tar", "unused").model)
    torch.set_num_threads(threads)
