"""Run configuration: complete presets, overrides, type and key errors, TOML round trip."""

import dataclasses
import tomllib

import pytest

from tgfr.train.config import (PRESET_DIR, TrainConfig, config_from_dict, find_preset, load_config, parse_override,
                               preset_names, to_toml)


def flat_keys(table, prefix=""):
    keys = set()
    for name, value in table.items():
        if isinstance(value, dict) and name != "splits":
            keys |= flat_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_presets_are_packaged_and_found_by_name():
    assert {"quick", "default"} <= set(preset_names())
    assert all(find_preset(name) == PRESET_DIR / f"{name}.toml" for name in preset_names())


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_writes_out_every_key_and_validates(preset):
    text = (PRESET_DIR / f"{preset}.toml").read_text(encoding="utf-8")
    expected = flat_keys(dataclasses.asdict(TrainConfig()))
    assert flat_keys(tomllib.loads(text)) == expected
    assert isinstance(load_config(preset), TrainConfig)


def test_default_preset_equals_dataclass_defaults():
    assert load_config("default") == TrainConfig()


def test_overrides_parse_toml_values_and_bare_words():
    config = load_config("quick", ["fr.steps=7", "fr.optim.lr=0.5", "align.supervision=weak",
                                   'data.manifest="a b.jsonl"', "model.freeze_text_encoder=false",
                                   'stages=["fr", "fuse"]', "fuse.arcface_scale=16"])
    assert config.fr.steps == 7 and config.fr.optim.lr == 0.5 and config.align.supervision == "weak"
    assert config.data.manifest == "a b.jsonl" and config.model.freeze_text_encoder is False
    assert config.stages == ["fr", "fuse"] and config.fuse.arcface_scale == 16.0
    assert parse_override("x.y=abc") == (["x", "y"], "abc")


@pytest.mark.parametrize("override, message", [
    ("fr.stepz=3", "unknown key fr.stepz"),
    ("fr.steps=1.5", "fr.steps must be of type int"),
    ("fr.steps=true", "fr.steps must be of type int"),
    ("align.supervision=labels", "align.supervision must be one of"),
    ("stages=[\"fr\", \"oops\"]", "stages must be distinct names"),
    ("nothing", "key=value"),
    ("fr.steps.x=1", "fr.steps is not a table"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("quick", [override])


def test_incomplete_preset_is_rejected(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("seed = 1\n")
    with pytest.raises(ValueError, match="missing key"):
        load_config(str(path))
    with pytest.raises(ValueError, match="preset 'nope'.*packaged presets"):
        load_config("nope")


def test_toml_round_trip():
    config = load_config("quick", ["data.manifest=\"q\\\"uote.jsonl\"", "fr.optim.weight_decay=1e-05"])
    assert config_from_dict(tomllib.loads(to_toml(config))) == config
