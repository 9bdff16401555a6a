"""pipeline.config (the dataclass tree), pipeline.config_load (YAML + overrides -> one validated
tree, and back) and pipeline.config_hash (which settings guard an output folder)."""

from __future__ import annotations

import pickle
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from extremal_core.settings import FAST_SCHEDULE, Execution, ExtremalSettings
from pipeline.config import ConfigError, JobConfig
from pipeline.config_hash import _hashed_dict, config_hash
from pipeline.config_load import config_from_dict, config_to_dict, dump_config_yaml, load_config
from pipeline.storage import Storage

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MINIMAL = ["input.shards=data/shard-{000000..000003}.tar", "model.arch=resnet50", "output.uri=/tmp/out"]


def _write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _error(path: str | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(str(path), [])
    assert isinstance(cfg, JobConfig)
    assert isinstance(cfg.extremal, ExtremalSettings)
    assert cfg.output.uri and cfg.input.shards
    # The dumped YAML is the resolved config: loading it back gives the same tree and hash.
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config_yaml(cfg))
    again = load_config(str(dumped), [])
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_shipped_configs_cover_the_required_set() -> None:
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"demo.yaml", "imagenet_vgg16.yaml", "imagenet_resnet50.yaml", "voc07_pointing.yaml", "coco14_pointing.yaml"} <= names
    voc = load_config(str(CONFIG_DIR / "voc07_pointing.yaml"), [])
    assert voc.extremal.optim.areas == (0.025, 0.05, 0.1, 0.2)
    assert (voc.extremal.optim.variant, voc.extremal.optim.reward, voc.targets.mode) == ("preserve", "simple", "labels")
    coco = load_config(str(CONFIG_DIR / "coco14_pointing.yaml"), [])
    assert coco.extremal.optim.areas == (0.018, 0.025, 0.05, 0.1) and coco.targets.mode == "labels"
    demo = load_config(str(CONFIG_DIR / "demo.yaml"), [])
    assert demo.cluster.num_gpus_per_actor == 0 and demo.cluster.num_actors == 2
    assert demo.model.factory == "demo.model:build_demo_model"


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, [*MINIMAL, "extremal.areas=[0.05,0.1]", "cluster.max_retries=5", "extremal.max_iter=300"])
    assert cfg.input.shards == "data/shard-{000000..000003}.tar"  # brace pattern kept as a string
    assert cfg.extremal.optim.areas == (0.05, 0.1)
    assert cfg.extremal.optim.max_iter == 300
    assert cfg.extremal.masks.sigma == ExtremalSettings().masks.sigma  # untouched engine defaults
    assert cfg.cluster.max_retries == 5
    assert cfg.model.preprocessing.crop == "auto"  # from the weights (or the arch's ImageNet recipe) when loaded
    assert cfg.worker.batch_size >= 1


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "input": {"shards": ["a.tar", "b.tar"]},
            "model": {"arch": "vgg16", "weights": None},
            "extremal": {"areas": 0.1, "learning_rate": "1e-2"},  # PyYAML reads 1e-2 as a string
            "output": {"uri": "out"},
        },
    )
    cfg = load_config(path, ["output.overwrite=true", "storage.endpoint_url=http://127.0.0.1:9000", "model.weights=null"])
    assert cfg.input.shards == ("a.tar", "b.tar")
    assert cfg.extremal.optim.areas == (0.1,)
    assert cfg.extremal.optim.learning_rate == pytest.approx(0.01)
    assert cfg.output.overwrite is True
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.model.weights is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("clustr.num_actors=2", "'clustr'"),
        ("cluster.max_retry=2", "'cluster.max_retry'"),
        ("extremal.area=[0.1]", "'extremal.area'"),
        ("model.preprocessing.centre_crop=224", "'model.preprocessing.centre_crop'"),
    ],
)
def test_unknown_keys_name_the_dotted_key_and_the_valid_ones(override: str, expected: str) -> None:
    message = _error(None, [*MINIMAL, override])
    assert f"unknown key {expected}" in message
    assert "valid keys:" in message


def test_unknown_key_lists_the_section_keys() -> None:
    message = _error(None, [*MINIMAL, "cluster.max_retry=2"])
    assert "max_retries" in message and "num_actors" in message
    assert "areas" in _error(None, [*MINIMAL, "extremal.area=0.1"])


def test_credentials_are_refused_with_a_hint(tmp_path: Path) -> None:
    message = _error(None, [*MINIMAL, "storage.secret_access_key=abc"])
    assert "AWS_" in message and "storage.secret_access_key" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cluster.max_retries=abc", "cluster.max_retries: expected int, got 'abc'"),
        ("cluster.max_retries=1.5", "cluster.max_retries: expected int"),
        ("output.overwrite=maybe", "output.overwrite: expected bool"),
        ("targets.mode=top5", "targets.mode: expected 'label' | 'labels' | 'top1' | 'topk'"),
        ("extremal.max_iter=abc", "extremal.max_iter: expected int"),
        ("extremal.areas=[0.1,abc]", "extremal.areas"),
        ("model.preprocessing.mean=[0.5,0.5]", "model.preprocessing.mean"),
        ("cluster=3", "cluster is a section; set one of its keys"),
    ],
)
def test_wrong_types_are_config_errors(override: str, expected: str) -> None:
    assert expected in _error(None, [*MINIMAL, override])


def test_engine_validation_is_reported_with_the_extremal_prefix() -> None:
    message = _error(None, [*MINIMAL, "extremal.areas=[0.1,1.5]"])
    assert message.startswith("extremal:") and "between 0 and 1" in message
    assert _error(None, [*MINIMAL, "extremal.variant=keep"]).startswith("extremal: unknown variant")


def test_required_and_cross_field_checks() -> None:
    assert "output.uri" in _error(None, MINIMAL[:2])
    assert "input.shards" in _error(None, MINIMAL[1:])
    assert "model" in _error(None, [MINIMAL[0], MINIMAL[2]])
    assert "model.factory" in _error(None, [MINIMAL[0], MINIMAL[2], "model.factory=not_a_factory"])
    assert "cuda" in _error(None, [*MINIMAL, "cluster.device=cuda", "cluster.num_gpus_per_actor=0"])


def test_bad_override_syntax_and_bad_files(tmp_path: Path) -> None:
    assert "key.path=value" in _error(None, ["extremal.max_iter"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    assert "invalid YAML" in _error(str(bad), [])
    assert "cannot read config" in _error(str(tmp_path / "missing.yaml"), [])
    assert "not a section" in _error(None, ["output.uri=x", "output.uri.deeper=1"])


def test_config_to_dict_is_plain_and_rebuilds() -> None:
    import json

    cfg = load_config(None, [*MINIMAL, "extremal.areas=[0.05,0.1]"])
    data = config_to_dict(cfg)
    json.dumps(data)  # JSON-able
    assert data["extremal"]["areas"] == [0.05, 0.1]
    assert config_from_dict(data) == cfg


def test_config_hash_tracks_only_what_changes_outputs() -> None:
    base = config_hash(load_config(None, MINIMAL))
    assert len(base) == 64 and int(base, 16) >= 0
    assert config_hash(load_config(None, MINIMAL)) == base  # deterministic
    same = [
        "cluster.num_actors=7",
        "cluster.max_retries=9",
        "output.overwrite=true",
        "output.uri=s3://elsewhere/out",
        "storage.endpoint_url=http://127.0.0.1:1",
        "worker.batch_size=2",
        "input.shards=other-{0..9}.tar",
        "extremal.max_masks_per_batch=4",
        "extremal.native_cpu_kernels=false",  # the same masks on either code path
        "extremal.compile=on",  # the fused, compiled iteration: the same masks to float rounding
    ]
    for override in same:
        assert config_hash(load_config(None, [*MINIMAL, override])) == base, override
    different = [
        "extremal.areas=[0.05]",
        "extremal.max_iter=10",
        "extremal.tie_tolerance=0",  # another rule for ties gives other masks
        "extremal.schedule=fast",
        "extremal.stop_tolerance=0.01",
        "model.arch=vgg16",
        "model.preprocessing.crop=192",
        "targets.mode=label",
        "output.map_format=png",
        "method.name=center",  # another method
        "extremal.max_iter=10",
        "input.label_key=label",
    ]
    for override in different:
        assert config_hash(load_config(None, [*MINIMAL, override])) != base, override
    # settings added later are hashed only away from their defaults: older outputs keep their hash
    hashed = _hashed_dict(load_config(None, MINIMAL))["extremal"]
    assert not {"schedule", "stop_tolerance", "stop_window", "stop_finish"} & set(hashed)
    # a non-default schedule hashes its definition: outputs of an earlier `fast` are another config
    fast = _hashed_dict(load_config(None, [*MINIMAL, "extremal.schedule=fast"]))["extremal"]["schedule"]
    assert fast == {"fast": FAST_SCHEDULE}


def test_storage_holds_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETVALUE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    cfg = load_config(
        None,
        [*MINIMAL, "storage.endpoint_url=http://127.0.0.1:9000", "storage.region=eu-west-1", "storage.anon=true",
         "storage.connect_timeout_s=2", "storage.max_attempts=1"],
    )
    storage = Storage.from_config(cfg)
    opts = storage.options
    assert opts["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}
    assert opts["anon"] is True
    assert opts["config_kwargs"]["connect_timeout"] == 2.0
    assert opts["config_kwargs"]["retries"]["max_attempts"] == 1
    text = repr(opts) + dump_config_yaml(cfg)
    assert "AKIDSECRETVALUE" not in text and "very-secret" not in text
    assert repr(storage) == "Storage()"  # its options are never printed
    assert pickle.loads(pickle.dumps(storage)) == storage  # it travels to Ray actors
    assert storage.options_for("s3://b/k") == opts and storage.options_for("/local/path") == {}
    plain = Storage.from_config(load_config(None, MINIMAL)).options
    assert "client_kwargs" not in plain and "anon" not in plain


def test_method_section_names_a_registered_method_and_its_parameters() -> None:
    cfg = load_config(None, MINIMAL)
    assert cfg.method.name == "extremal" and cfg.method.params == {}  # the default: the paper's method
    channels = load_config(None, [*MINIMAL, "method.name=extremal_channels", "method.layer=layer3"])
    assert channels.method.params == {"layer": "layer3"} and channels.method.uses_engine_settings
    assert config_to_dict(channels)["method"] == {"name": "extremal_channels", "layer": "layer3"}
    assert config_from_dict(config_to_dict(channels)) == channels
    assert not load_config(None, [*MINIMAL, "method.name=center"]).method.uses_engine_settings
    assert _error(None, [*MINIMAL, "method.name=gradcam"]).startswith("method.name: unknown method 'gradcam'")
    assert "unknown key 'method.sigmaa' for method 'center'" in _error(None, [*MINIMAL, "method.name=center", "method.sigmaa=1"])
    assert "set extremal.max_iter" in _error(None, [*MINIMAL, "method.max_iter=3"])


def test_method_parameters_are_hashed_and_unused_settings_are_not() -> None:
    center = config_hash(load_config(None, [*MINIMAL, "method.name=center"]))
    assert config_hash(load_config(None, [*MINIMAL, "method.name=center", "method.sigma=0.3"])) != center
    # The centre baseline never reads the extremal settings: they do not change its rows.
    assert config_hash(load_config(None, [*MINIMAL, "method.name=center", "extremal.max_iter=3"])) == center
    layer3 = config_hash(load_config(None, [*MINIMAL, "method.name=extremal_channels", "method.layer=layer3"]))
    assert config_hash(load_config(None, [*MINIMAL, "method.name=extremal_channels", "method.layer=layer2"])) != layer3


def test_engine_settings_declare_once_what_the_hash_covers() -> None:
    """Each engine setting says whether it changes the masks (extremal_core/settings.py); the hash
    reads that declaration: a speed knob leaves it, a result setting (any group) changes it."""
    base = config_hash(load_config(None, MINIMAL))
    speed = {f.name for f in fields(Execution) if f.metadata.get("results") is False}
    assert speed == {"max_masks_per_batch", "memory_budget_mb", "channels_last", "fuse_batchnorm",
                     "pool_before_relu", "native_cpu_kernels", "compile", "tf32"}
    for override in ("extremal.tf32=true", "extremal.fuse_batchnorm=false", "extremal.execution.memory_budget_mb=64"):
        assert config_hash(load_config(None, [*MINIMAL, override])) == base, override
    for override in ("extremal.autocast=bfloat16", "extremal.masks.sigma=5", "extremal.warm_start=up", "extremal.jitter=false"):
        assert config_hash(load_config(None, [*MINIMAL, override])) != base, override


def test_engine_settings_by_flat_name_or_group() -> None:
    """``extremal.max_iter`` and ``extremal.optim.max_iter`` are one setting; the resolved config
    is written with flat names, as users write it."""
    flat = load_config(None, [*MINIMAL, "extremal.max_iter=300", "extremal.sigma=5"])
    grouped = load_config(None, [*MINIMAL, "extremal.optim.max_iter=300", "extremal.masks.sigma=5"])
    assert flat == grouped and flat.extremal.optim.max_iter == 300 and flat.extremal.masks.sigma == 5.0
    assert config_to_dict(grouped)["extremal"]["max_iter"] == 300
    assert "extremal.optim.step" in _error(None, [*MINIMAL, "extremal.optim.step=3"])  # step is a mask setting
    assert "set twice" in _error(None, [*MINIMAL, "extremal.sigma=4", "extremal.masks.sigma=5"])
