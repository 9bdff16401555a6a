"""A job's configuration: one validated dataclass tree, loaded from YAML plus ``a.b=c`` overrides.

Every section is a frozen dataclass; values are type-checked against the annotations when the tree
is built, so a typo or a wrong type fails before any work starts, with a one-line message naming
the full dotted key. The engine settings are ``extremal_core.settings.ExtremalSettings`` itself:
the pipeline does not duplicate the algorithm's numbers.

Credentials never live here: s3fs/botocore read them from the ``AWS_*`` environment variables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import yaml

from extremal_core.methods import get_method
from extremal_core.methods.registry import parameter_names
from extremal_core.settings import ExtremalSettings


class ConfigError(ValueError):
    """An invalid configuration; the message is one line and names the offending dotted key."""


# ------------------------------------------------------------------------------------------------
# The tree
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputConfig:
    """Where the WebDataset shards are.

    ``shards``: a brace pattern (``data/shard-{000000..000099}.tar``), a glob, ``@list.txt`` (one
    URL per line), or a list of any of these; any fsspec URL (local path, ``s3://``...).
    ``label_key``: the member extension holding the class index (``cls`` -> ``<key>.cls``), also
    looked up as a field of the sample's ``json``.
    """

    shards: str | tuple[str, ...] = ()
    label_key: str = "cls"

    def validate(self) -> None:
        if not self.shards:
            raise ConfigError("input.shards is required: a brace pattern, glob, @listfile or list of URLs")


AUTO = "auto"


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
    error).
    """

    arch: str | None = None
    weights: str | None = None
    checkpoint: str | None = None
    factory: str | None = None
    num_classes: int | None = None
    download_weights: bool = True
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
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be a positive integer or null, got {self.num_classes}")
        self.preprocessing.validate()


@dataclass(frozen=True)
class TargetsConfig:
    """Which class(es) each image is explained for: its ``label``, the model's ``top1`` or ``topk``
    predictions (one output row per target)."""

    mode: Literal["label", "top1", "topk"] = "top1"
    k: int = 1

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"targets.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class MethodConfig:
    """The attribution method of the job (one per job and output folder): a name from
    ``extremal_core.available_methods()`` and that method's parameters, written flat next to it
    (``method: {name: extremal_channels, layer: layer3}``).

    The methods that take ``ExtremalSettings`` (``extremal``, ``extremal_channels``) get the
    ``extremal:`` section as their settings, so switching ``method.name`` keeps one place for the
    algorithm's numbers; such a setting given under ``method:`` is refused (one place, one value).
    """

    name: str = "extremal"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_engine_settings(self) -> bool:
        """Whether the method takes ``settings=`` (the ``extremal:`` section)."""
        return "settings" in (parameter_names(get_method(self.name)) or ())

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
    (uint8 fixed-shape tensor) or ``png`` (one grayscale PNG per map).
    """

    uri: str = ""
    overwrite: bool = False
    map_format: Literal["tensor", "png"] = "tensor"

    def validate(self) -> None:
        if not self.uri:
            raise ConfigError("output.uri is required (a local folder or e.g. s3://bucket/prefix)")


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


# Fields that do not change any output row: a run that differs only in these may resume another's
# output. Shards are excluded so a job can be extended with more shards; batching knobs and the
# device only move floats within tolerance (SPEC section 1, "Batching").
_HASH_EXCLUDED: tuple[str, ...] = (
    "input.shards",
    "worker",
    "output.uri",
    "output.overwrite",
    "cluster",
    "storage",
    "extremal.max_masks_per_batch",
    "extremal.memory_budget_mb",
    "extremal.channels_last",
    "extremal.fuse_batchnorm",
    "extremal.pool_before_relu",
    "extremal.native_cpu_kernels",
    "model.download_weights",
)

_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


# ------------------------------------------------------------------------------------------------
# Building and type-checking
# ------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised (lists -> tuples,
    ints -> floats where a float is expected). Raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - an annotation this module does not know
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_keys(data: Any, cls: type, prefix: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        where = prefix or "the config"
        raise ConfigError(f"{where}: expected a mapping, got {data!r} ({type(data).__name__})")
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            hint = ""
            if any(w in str(key).lower() for w in _SECRET_WORDS):
                hint = " (credentials are never read from the config: use AWS_* environment variables)"
            raise ConfigError(f"unknown key {dotted!r}{hint}; valid keys: {', '.join(valid)}")
    return data


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    data = _check_keys(data, cls, prefix)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if tp is ExtremalSettings:
            kwargs[f.name] = _build_extremal(data.get(f.name), key)
        elif tp is MethodConfig:
            kwargs[f.name] = _build_method(data.get(f.name), key)
        elif dataclasses.is_dataclass(tp):
            # Absent sections are built too, so their required fields are checked.
            kwargs[f.name] = _build(tp, data.get(f.name), key)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _build_extremal(data: Any, prefix: str) -> ExtremalSettings:
    data = _check_keys(data, ExtremalSettings, prefix)
    hints = typing.get_type_hints(ExtremalSettings)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        # The engine accepts a single number for `areas`; so does the config.
        if name == "areas" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        kwargs[name] = _coerce(value, tp, f"{prefix}.{name}")
    try:
        return ExtremalSettings(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc


def _build_method(data: Any, prefix: str) -> MethodConfig:
    """``{name, **params}`` -> MethodConfig; the name and the parameters' names are checked against
    the method registry here, so a typo exits before Ray starts."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping such as {{name: extremal}}, got {data!r}")
    params = dict(data)
    name = params.pop("name", MethodConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}.name: expected str, got {name!r} ({type(name).__name__})")
    try:
        cls = get_method(name)
    except ValueError as exc:
        raise ConfigError(f"{prefix}.name: {exc}") from None
    valid = parameter_names(cls)
    if valid is not None:
        settings = {f.name for f in fields(ExtremalSettings)} if "settings" in valid else set()
        allowed = [v for v in valid if v != "settings" and v not in settings]
        for key in params:
            if key in settings:
                raise ConfigError(f"{prefix}.{key} is an engine setting of {name!r}: set extremal.{key}")
            if key not in allowed:
                keys = ", ".join(["name", *allowed])
                raise ConfigError(f"unknown key '{prefix}.{key}' for method {name!r}; valid keys: {keys}")
    return MethodConfig(name=name, params={k: _plain(v) for k, v in params.items()})


def config_from_dict(data: dict[str, Any] | None) -> JobConfig:
    """Build and validate a JobConfig from a plain mapping (as loaded from YAML)."""
    return _build(JobConfig, data or {}, "")


def _parse_value(text: str) -> Any:
    """An override value as a YAML scalar/list; text YAML cannot parse (``{000..009}.tar``) stays
    a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # A brace pattern can parse as a YAML flow mapping; the user meant the string.
    return text if isinstance(value, dict) else value


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b=c`` override to a nested mapping in place."""
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"bad override {override!r}: expected key.path=value, e.g. extremal.max_iter=300")
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"bad override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = _parse_value(text)


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a job from a YAML file (``None``: start from the defaults), apply ``a.b=c`` overrides
    (values parsed as YAML: ``extremal.areas=[0.05,0.1]``), and validate."""
    data: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data)


# ------------------------------------------------------------------------------------------------
# Serialising
# ------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, MethodConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (tuples become lists); feeding it back to
    ``config_from_dict`` gives an equal config."""
    return _plain(cfg)


def _hashed_dict(cfg: JobConfig) -> dict[str, Any]:
    data = config_to_dict(cfg)
    if not cfg.method.uses_engine_settings:
        data.pop("extremal")  # settings the method never reads do not change its rows
    for dotted in _HASH_EXCLUDED:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return data


def config_hash(cfg: JobConfig) -> str:
    """sha256 hex of the canonical JSON of the fields that change the output rows: the method and
    its parameters included; not the cluster, storage or output location, batching knobs, or
    the list of shards."""
    canonical = json.dumps(_hashed_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def dump_config_yaml(cfg: JobConfig) -> str:
    """The resolved config as YAML, loadable by ``load_config``."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def storage_options(cfg: JobConfig) -> dict[str, Any]:
    """Keyword arguments for ``fsspec.open``/``url_to_fs`` on ``s3://`` URLs.

    Holds no credentials (botocore reads ``AWS_*`` from the environment), so it is safe to log and
    to ship to actors. Timeouts and attempts are bounded so an unreachable endpoint fails fast.
    """
    st = cfg.storage
    opts: dict[str, Any] = {}
    if st.anon:
        opts["anon"] = True
    client_kwargs: dict[str, Any] = {}
    if st.endpoint_url:
        client_kwargs["endpoint_url"] = st.endpoint_url
    if st.region:
        client_kwargs["region_name"] = st.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    opts["config_kwargs"] = {
        "connect_timeout": st.connect_timeout_s,
        "read_timeout": st.read_timeout_s,
        "retries": {"max_attempts": st.max_attempts, "mode": "standard"},
    }
    return opts
