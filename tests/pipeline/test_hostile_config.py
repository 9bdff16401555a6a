"""What a careless or malicious user may hand the jobs, each a one-line error (exit 2), bounded
however large the input: YAML alias bombs, non-UTF-8 files, a whole section reset by ``--set``,
folders that are not an attribution output given to the evaluations."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.config_load import MAX_CONFIG_VALUES, load_config


def _bomb(path: Path, levels: int) -> str:
    """A config whose ``model.num_classes`` is a billion-laughs list: 10^levels leaves, all anchors
    inside the one known key."""
    parts = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    path.write_text("input:\n  shards: x.tar\noutput:\n  uri: out\nmodel:\n  arch: resnet18\n"
                    f"  num_classes: [{', '.join(parts)}]\n")
    return str(path)


def _error(path: str | None, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    text = str(err.value)
    assert "\n" not in text and len(text) < 600, text[:1000]
    return text


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path: Path) -> None:
    assert 10**9 > MAX_CONFIG_VALUES
    assert "values once YAML aliases are expanded" in _error(_bomb(tmp_path / "b9.yaml", 9))  # 10^9 leaves


def test_a_large_value_is_named_in_a_bounded_line(tmp_path: Path) -> None:
    text = _error(_bomb(tmp_path / "b5.yaml", 5))  # 10^5 leaves: within the limit, the wrong type
    assert text.startswith("model.num_classes: expected int | null, got [[") and "..." in text
    assert "expected int | null" in _error(None, ["input.shards=x.tar", "model.num_classes=[" + ",".join(["1"] * 2000) + "]"])


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"input:\n  shards: caf\xe9.tar\n")
    assert _error(str(path)) == f"{path}: not UTF-8 text (byte 0xe9 at offset 20)"


@pytest.mark.parametrize("override", ["extremal=", "model.preprocessing=", "extremal=null"])
def test_a_section_is_never_reset_by_an_override(override: str) -> None:
    section = override.partition("=")[0]
    assert f"{section} is a section; set one of its keys" in _error(None, ["input.shards=x.tar", override])


def test_the_evaluations_refuse_a_folder_that_is_not_an_attribution_output(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.pointing_game import main as pointing_game
    from jobs.report import main as report

    folder = tmp_path / "mine"
    (folder / "parts").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), folder / "parts" / "x.parquet")
    assert pointing_game(["--results", str(folder), "--local"]) == 2
    assert "is not the output of an attribution job: its parts lack the columns" in capsys.readouterr().err
    assert report(["--input", str(folder), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "its parts lack the columns shard, key, target, method, maps, error" in err and err.count("\n") == 1
    assert not (tmp_path / "report").exists()
