"""A job's configuration: one validated dataclass tree, loaded from YAML plus ``a.b=c`` overrides.

Every section is a frozen dataclass; values are type-checked against the annotations when the tree
is built, so a typo or a wrong type fails before any work starts, with a one-line message naming
the full dotted key. The engine settings are ``extremal_core.settings.ExtremalSettings`` itself:
the pipeline does not duplicate the algorithm's numbers.

Parsing, overrides and validation of the whole tree: ``pipeline.config_load``; the hash that
guards an output folder: ``pipeline.config_hash``.

Credentials never live here: s3fs/botocore read them from the ``AWS_*`` environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from extremal_core.methods import MethodCard, card_of, get_method
from extremal_core.settings import ExtremalSettings


class ConfigError(ValueError):
    """An invalid configuration; the message is one line and names the offending dotted key."""


# ------------------------------------------------------------------------------------------------
# The tree
# ------------------------------------------------------------------------------------------------


AUTO = "auto"


@dataclass(frozen=True)
class InputConfig:
    """Where the input is: WebDataset shards, or Parquet / Hugging Face datasets files (``format``).

    ``shards``: a brace pattern (``data/shard-{000000..000099}.tar``), a glob, ``@list.txt`` (one
    URL per line), or a list of any of these; any fsspec URL (local path, ``s3://``...).
    ``label_key``: the member extension holding the class index (``cls`` -> ``<key>.cls``), also
    looked up as a field of the sample's ``json``. ``max_pixels``: the memory guard, per image:
    an image larger than this, or one that preprocessing would resize to more than this, is an
    error row (checked before the pixels are allocated; ``pipeline.images``).
    ``format``: ``webdataset`` (tars), ``parquet`` (Parquet files: image bytes in
    ``image_column``, default ``jpg``, and ``key_column``, default ``key``, as img2dataset writes)
    or ``hf_datasets`` (Hugging Face ``datasets`` folders: ``image`` and ``label`` features); the
    table formats take the label from the column ``label_key`` or ``label`` (``pipeline.tables``).
    """

    shards: str | tuple[str, ...] = ()
    label_key: str = "cls"
    max_pixels: int = 50_000_000
    format: Literal["webdataset", "parquet", "hf_datasets"] = "webdataset"
    image_column: str = AUTO
    key_column: str | None = AUTO

    def validate(self) -> None:
        if not self.shards:
            raise ConfigError("input.shards is required: a brace pattern, glob, @listfile or list of URLs")
        if self.max_pixels < 1:
            raise ConfigError(f"input.max_pixels must be >= 1, got {self.max_pixels}")



@dataclass(frozen=True)
class PreprocessingConfig:
    """Image -> model input: resize the shorter side to ``resize`` (``interpolation``, antialias),
    centre-crop to ``crop`` x ``crop``, scale to [0, 1], normalise with ``mean``/``std``.

    ``auto`` (the default of every field) takes the value from the torchvision weights'
    transforms (``weights.transforms()``: ResNet-50 ``IMAGENET1K_V2`` resizes to 232, not 256);
    without weights, ImageNet's 256 / 224 / mean / std for a torchvision ``arch`` and no resize, no
    crop, mean 0, std 1 for a ``factory``. ``null`` skips a step (``resize: null`` keeps the size).
    """

    resize: int | Literal["auto"] | None = AUTO
    crop: int | Literal["auto"] | None = AUTO
    mean: tuple[float, ...] | Literal["auto"] = AUTO
    std: tuple[float, ...] | Literal["auto"] = AUTO
    interpolation: Literal["auto", "nearest", "bilinear", "bicubic"] = AUTO

    def validate(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"model.preprocessing.{name} must be a positive integer, auto or null, got {value}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value != AUTO and len(value) != 3:
                raise ConfigError(f"model.preprocessing.{name} must have 3 values (RGB) or be auto, got {list(value)}")
        if self.std != AUTO and any(s <= 0 for s in self.std):
            raise ConfigError(f"model.preprocessing.std must be positive, got {list(self.std)}")


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to explain and how its input is made: the one description of a model
    (``pipeline.models.load_model`` builds it, ``resolve_preprocess`` fills in ``auto``).

    Either ``arch`` (a torchvision name such as ``resnet50``, with ``weights`` such as
    ``IMAGENET1K_V2``) or ``factory`` (``package.module:function`` returning an ``nn.Module``,
    called with ``num_classes`` when given). ``checkpoint`` (any fsspec URL) is a state_dict loaded
    on top (with ``weights`` too: then the weights only give the preprocessing, e.g. a model
    fine-tuned from them). ``download_weights``: fetch torchvision weights missing from the torch
    hub cache (turn it off on machines without internet, where a missing file is then a clear
    error). ``arch: timm/<name>`` and ``arch: hf/<folder>`` are timm and Hugging Face classifiers
    (``pipeline.zoo``); ``options``: keyword arguments for ``timm.create_model`` (e.g. ``depth``).
    ``arch: torchray/vgg16 | torchray/resnet50`` with ``dataset: voc07 | coco14`` are TorchRay's
    pointing-game benchmark models from their checkpoint (``pipeline.benchmark_models``).
    """

    arch: str | None = None
    weights: str | None = None
    checkpoint: str | None = None
    factory: str | None = None
    num_classes: int | None = None
    dataset: str | None = None
    download_weights: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)

    def validate(self) -> None:
        if not self.arch and not self.factory:
            raise ConfigError("model: set model.arch (e.g. resnet50) or model.factory (package.module:function)")
        if self.arch and self.factory:
            raise ConfigError("model: set only one of model.arch and model.factory")
        if self.factory is not None:
            module, sep, func = self.factory.partition(":")
            if not sep or not module or not func.isidentifier():
                raise ConfigError(f"model.factory must look like 'package.module:function', got {self.factory!r}")
        if self.options and not str(self.arch).startswith(("timm/", "torchray/")):
            raise ConfigError("model.options are keyword arguments for timm.create_model; they need model.arch: timm/<name>")
        if (self.dataset is not None) != str(self.arch).startswith("torchray/"):
            raise ConfigError("model.dataset (voc07 | coco14) goes with model.arch: torchray/vgg16 | torchray/resnet50")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be a positive integer or null, got {self.num_classes}")
        self.preprocessing.validate()


@dataclass(frozen=True)
class TargetsConfig:
    """Which class(es) each image is explained for: its ``label``, every class present
    (``labels``: the json's ``labels`` list, as ``jobs.make_shards`` writes it; the pointing
    game's protocol), the model's ``top1`` or ``topk`` predictions (one output row per target)."""

    mode: Literal["label", "labels", "top1", "topk"] = "top1"
    k: int = 1

    @property
    def reads_labels(self) -> bool:
        """Whether the samples' labels are used: the prediction modes never read (or parse) them."""
        return self.mode in ("label", "labels")

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"targets.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class MethodConfig:
    """The attribution method of the job (one per job and output folder): a name from
    ``extremal_core.available_methods()`` or ``package.module:Class`` (a method outside the
    registry), and that method's parameters, written flat next to it (``method: {name:
    extremal_channels, layer: layer3}``).

    The methods whose card says they take engine settings (``extremal``, ``extremal_channels``) get
    the ``extremal:`` section as their settings, so switching ``method.name`` keeps one place for
    the algorithm's numbers; such a setting given under ``method:`` is refused (one place, one
    value). The name is resolved once (``method_class``), when the config is validated.
    """

    name: str = "extremal"
    params: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def method_class(self) -> type:
        """The method's class (the registry's, or imported from ``package.module:Class``)."""
        return get_method(self.name)

    @property
    def card(self) -> MethodCard:
        """What the method is (``extremal_core.methods.MethodCard``)."""
        return card_of(self.method_class)

    @property
    def uses_engine_settings(self) -> bool:
        """Whether the method takes ``settings=`` (the ``extremal:`` section)."""
        return self.card.engine_settings

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


@dataclass(frozen=True)
class WorkerConfig:
    """Pipeline-side knobs of one actor. ``batch_size``: images per ``explain`` call (an extremal
    image brings ``len(extremal.areas)`` masks). ``prefetch``: decoded images buffered ahead of the
    engine by the worker's reader thread.
    """

    batch_size: int = 8
    prefetch: int = 16

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"worker.batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch < 1:
            raise ConfigError(f"worker.prefetch must be >= 1, got {self.prefetch}")


@dataclass(frozen=True)
class OutputConfig:
    """Where the Parquet parts, done-markers and manifest go (any fsspec URL).

    ``overwrite``: start over, deleting the parts and markers of an earlier run (otherwise a run
    resumes, and refuses an output made with a different config). ``map_format``: ``tensor``
    (uint8 fixed-shape tensor) or ``png`` (one grayscale PNG per map). ``lease_ttl_s``: how long
    the job's hold on the folder lasts without renewal (``pipeline.lease``; renewed every quarter
    of it): a job whose driver vanished on another machine frees the folder after this long.
    """

    uri: str = ""
    overwrite: bool = False
    map_format: Literal["tensor", "png"] = "tensor"
    lease_ttl_s: float = 60.0

    def validate(self) -> None:
        if not self.uri:
            raise ConfigError("output.uri is required (a local folder or e.g. s3://bucket/prefix)")
        if self.lease_ttl_s < 1:
            raise ConfigError(f"output.lease_ttl_s must be >= 1, got {self.lease_ttl_s}")


@dataclass(frozen=True)
class ClusterConfig:
    """Ray resources and failure handling.

    ``num_actors: null`` means one per GPU (per CPU slot of ``num_cpus_per_actor`` when
    ``num_gpus_per_actor`` is 0). ``max_retries`` counts re-runs of a failed shard after its first
    attempt.
    """

    address: str | None = None
    num_actors: int | None = None
    num_gpus_per_actor: float = 1.0
    num_cpus_per_actor: float = 1.0
    max_in_flight_per_actor: int = 2
    max_retries: int = 2
    retry_backoff_s: float = 5.0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"cluster.num_actors must be >= 1 or null, got {self.num_actors}")
        if self.num_gpus_per_actor < 0 or self.num_cpus_per_actor < 0:
            raise ConfigError("cluster.num_gpus_per_actor and cluster.num_cpus_per_actor must be >= 0")
        if self.max_in_flight_per_actor < 1:
            raise ConfigError(f"cluster.max_in_flight_per_actor must be >= 1, got {self.max_in_flight_per_actor}")
        if self.max_retries < 0:
            raise ConfigError(f"cluster.max_retries must be >= 0, got {self.max_retries}")
        if self.retry_backoff_s < 0:
            raise ConfigError(f"cluster.retry_backoff_s must be >= 0, got {self.retry_backoff_s}")
        if self.device == "cuda" and self.num_gpus_per_actor == 0:
            raise ConfigError("cluster.device is 'cuda' but cluster.num_gpus_per_actor is 0")


@dataclass(frozen=True)
class StorageConfig:
    """How fsspec reaches remote storage. Credentials come from ``AWS_*`` environment variables,
    never from here. The timeouts and attempt count bound how long an unreachable endpoint
    blocks a worker."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5

    def validate(self) -> None:
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ConfigError("storage.connect_timeout_s and storage.read_timeout_s must be positive")
        if self.max_attempts < 1:
            raise ConfigError(f"storage.max_attempts must be >= 1, got {self.max_attempts}")


@dataclass(frozen=True)
class JobConfig:
    """One attribution job."""

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    extremal: ExtremalSettings = field(default_factory=ExtremalSettings)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
