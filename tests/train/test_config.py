"""Run configuration: complete presets, overrides, type, key and value errors, TOML round trip."""

import dataclasses
import functools
import json
import math
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tgfr.cli import main
from tgfr.data import SyntheticConfig
from tgfr.data.synthetic import GENERATOR_VERSION
from tgfr.train.config import (PRESET_DIR, DataConfig, EvaluationConfig, FRStageConfig, FuseStageConfig, ModelConfig,
                               OptimConfig, TrainConfig, config_from_dict, config_to_dict, find_preset, load_config,
                               parse_override, preset_names, read_run_config, to_toml)
from tgfr.train.loop import lr_factor
from tgfr.train.run import train


FLOAT32_MAX = 3.4028234663852886e38  # the ops compute in float32: scales, gammas and loss weights stop here
LOSS_WEIGHTS = ("fr.ce_weight", "fr.coreface_weight", "align.wrcl_weight", "align.cicl_weight", "align.intra_weight",
                "align.identity_weight")
# (key, low, high): evaluation's sizes lie in [low, high).
EVALUATION_SIZE_BOUNDS = (("evaluation.impostor_subjects", 0, 2**20), ("evaluation.gallery_per_subject", 1, 2**20),
                          ("evaluation.bootstrap_resamples", 0, 10**6 + 1), ("evaluation.max_rank", 1, 2**20),
                          ("evaluation.batch_size", 1, 2**20), ("evaluation.heatmap_captions", 0, 2**10))


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
    config = load_config("quick", ["fr.steps=17", "fr.optim.lr=0.5", "align.supervision=weak",
                                   'data.manifest="a b.jsonl"', "model.freeze_text_encoder=false",
                                   'stages=["fr", "align"]', "fuse.arcface_scale=16", "align.steps = 50"])
    assert config.fr.steps == 17 and config.fr.optim.lr == 0.5 and config.align.supervision == "weak"
    assert config.data.manifest == "a b.jsonl" and config.model.freeze_text_encoder is False
    assert config.stages == ["fr", "align"] and config.align.steps == 50
    # An integer for a float setting is stored (and written to config.toml) as the float.
    assert config.fuse.arcface_scale == 16.0 and type(config.fuse.arcface_scale) is float
    assert "arcface_scale = 16.0" in to_toml(config).split("[fuse]")[1]
    assert parse_override("x.y=abc") == (["x", "y"], "abc")
    assert parse_override("fr.steps = 50") == (["fr", "steps"], 50)  # spaces around '=' as TOML allows them
    assert parse_override(r"data.manifest=C:\data\m.jsonl") == (["data", "manifest"], r"C:\data\m.jsonl")
    # A bare word keeps none of the spaces around it: "data.cache_dir = mycache" made a folder " mycache".
    assert parse_override("align.supervision = weak ") == (["align", "supervision"], "weak")
    # Only TOML's white space: a no-break space kept is named in the error ('50\xa0'), not hidden ('50').
    assert parse_override("data.cache_dir=c\xa0") == (["data", "cache_dir"], "c\xa0")
    assert parse_override("align.supervision=weak\r\n") == (["align", "supervision"], "weak")
    # A line of an overrides file with a space before its line break: the space left made a folder "mycache ".
    assert parse_override("data.cache_dir=mycache \n") == (["data", "cache_dir"], "mycache")
    with pytest.raises(ValueError, match="spans more than one line"):  # a line of a CRLF file, its \n cut off
        parse_override("fr.steps=50\r")
    # In the key, a line break let TOML read a table header ([fr]) into it, or failed naming nothing.
    for key in ('[fr]\n"steps"', "fr.steps\n", "fr\r.steps", '[fr]\n[align]\n"x"'):
        with pytest.raises(ValueError, match=rf"^override key {re.escape(repr(key))} spans more than one line"):
            parse_override(f"{key}=5")
    assert load_config("quick", ["data.cache_dir = mycache"]).data.cache_dir == "mycache"
    # One value over lines (a multi-line string) and a line break after the value are TOML's.
    assert parse_override('x.y="""a\nb"""') == (["x", "y"], "a\nb")
    assert parse_override("fr.steps=50\n") == (["fr", "steps"], 50)


@pytest.mark.parametrize("raw", ['"mycache', ' "mycache', r'"C:\data\m.jsonl"', "'a' b", '["fr", "fuse"', "{a = 1"])
def test_an_override_opening_like_toml_must_be_toml_not_text_with_its_quotes(raw):
    """Taken as text, '"mycache' (a missing closing quote) would make a cache folder named "mycache."""
    with pytest.raises(ValueError, match=rf"^override data\.cache_dir: {re.escape(raw)} is not a valid TOML value") as error:
        load_config("quick", [f"data.cache_dir={raw}"])
    assert "column" not in str(error.value)  # tomllib's column counts a prefix the user never typed


@pytest.mark.parametrize("override, message", [
    ("fr.stepz=3", "unknown key fr.stepz"),
    ("fr.steps=1.5", "fr.steps must be of type int"),
    ("fr.steps=true", "fr.steps must be of type int"),
    ("data.cache_dir=2024", r"^data\.cache_dir must be of type str, got 2024 \(int\); TOML reads an unquoted number, "
                            r"date or boolean as one: quote it to give text \(--set 'data\.cache_dir=\"\.\.\.\"'\)$"),
    ('data.cache_dir=["runs"]', r"^data\.cache_dir must be of type str, got \['runs'\] \(list\)$"),  # no quoting hint
    # An entry of a table of strings is named, with the same hint: the error named the whole table and gave none.
    *((override, r"^evaluation\.splits\.clean must be of type str, got 2024 \(int\); TOML reads an unquoted number, "
                 r"date or boolean as one: quote it to give text \(--set 'evaluation\.splits\.clean=\"\.\.\.\"'\)$")
      for override in ("evaluation.splits.clean=2024", 'evaluation.splits={clean = 2024, degraded = "test_degraded"}')),
    # Python's and everyday spellings of a boolean are bare words, strings, to TOML.
    *((f"{key}={word}", rf"^{re.escape(key)} must be of type bool, got {re.escape(repr(word))} \(str\); TOML writes a "
                        r"boolean as true or false \(lower case\)$")
      for key in ("fuse.focal", "model.freeze_text_encoder") for word in ("True", "False", "yes", "no", "NO")),
    ("fuse.focal=maybe", r"^fuse\.focal must be of type bool, got 'maybe' \(str\)$"),  # no boolean hint
    ("align.supervision=labels", "align.supervision must be one of"),
    ("stages=[\"fr\", \"oops\"]", "stages must be distinct names"),
    ("stages=[]", "stages must be .*at least one"),
    ("stages=[\"fr\", \"fr\"]", "stages must be distinct names"),
    ("stages=[\"align\", \"fr\"]", "stages must be .*in that order"),
    ("stages=[\"fuse\", \"align\"]", "stages must be .*in that order"),
    ("nothing", "key=value"),
    ("fr.steps.x=1", "fr.steps is not a table"),
    ("fr.steps=0", r"fr\.steps must be an integer in \[1, 281474976710656\), got 0"),
    ("fuse.steps=-3", r"fuse\.steps must be an integer in \[1, "),
    ("checkpoint_every=0", r"^checkpoint_every must be an integer in \[1, 9223372036854775808\), got 0$"),
    ("log_every=-1", r"^log_every must be an integer in \[1, 9223372036854775808\), got -1$"),
    ("threads=-1", r"threads must be an integer in \[0, 4097\), got -1"),
    ("fr.optim.min_lr_ratio=1.5", r"fr\.optim\.min_lr_ratio must lie in \[0.0, 1.0\]"),
    ("align.optim.min_lr_ratio=-0.1", r"align\.optim\.min_lr_ratio must lie in"),
    ("fr.optim.momentum=1.0", r"^fr\.optim\.momentum must lie in \[0\.0, 1\.0\), got 1\.0$"),
    ("align.optim.momentum=-0.1", r"^align\.optim\.momentum must lie in \[0\.0, 1\.0\)"),
    ("align.optim.grad_clip=inf", r"align\.optim\.grad_clip must lie in"),
    ("fr.optim.grad_clip=nan", r"fr\.optim\.grad_clip must lie in"),
    ("fr.optim.grad_clip=-1", r"fr\.optim\.grad_clip must lie in"),
    ("fr.ce_weight=-0.5", r"fr\.ce_weight must lie in"),
    ("fr.coreface_weight=-1", r"fr\.coreface_weight must lie in"),
    ("align.wrcl_weight=-1", r"align\.wrcl_weight must lie in"),
    ("align.identity_weight=nan", r"align\.identity_weight must lie in"),
    ("fr.arcface_margin=1.5", r"fr\.arcface_margin must lie in \[0.0, 1.5\)"),
    ("fuse.arcface_margin=-0.1", r"fuse\.arcface_margin must lie in"),
    ("align.identity_margin=2", r"align\.identity_margin must lie in"),
    ("align.gamma1=0", r"align\.gamma1 must be a finite positive number"),
    ("align.gamma2=-5", r"align\.gamma2 must be a finite positive number"),
    ("fr.arcface_scale=0", r"fr\.arcface_scale must be a finite positive number"),
    # The ops and losses compute in float32: a larger scale or gamma would be inf there.
    *((f"{key}=3.4028236e38", rf"^{re.escape(key)} must be a finite positive number of at most 3\.40282e\+38, "
                              r"got 3\.4028236e\+38$")
      for key in ("fr.arcface_scale", "fr.coreface_scale", "align.gamma1", "align.gamma2", "align.gamma3",
                  "align.cicl_scale", "align.intra_scale", "align.identity_scale", "fuse.arcface_scale")),
    ("align.num_prototypes=0", r"align\.num_prototypes must be an integer in \[1, 1048576\), got 0"),
    ("evaluation.bootstrap_resamples=9223372036854775808", r"^evaluation\.bootstrap_resamples must be an integer in "),
    # Past these, torch or numpy failed with a traceback naming no setting (an overflow, terabytes to allocate).
    *((f"{key}={high}", rf"^{re.escape(key)} must be an integer in \[{low}, {high}\), got {high}$")
      for key, low, high in (("threads", 0, 4097), ("model.width", 1, 2**16), ("model.num_features", 1, 2**16),
                             ("model.dim", 1, 2**16), ("model.fine_dim", 1, 2**16), ("model.max_length", 3, 2**16),
                             ("model.fusion_out_dim", 1, 2**16),
                             ("data.images_per_identity", 1, 2**20), ("data.identities_per_batch", 1, 2**20),
                             ("data.loader_workers", 0, 1025), ("data.synthetic_identities", 1, 10**7 + 1),
                             ("data.synthetic_images_per_identity", 1, 10**5 + 1),
                             ("data.synthetic_captions_per_image", 1, 10**4 + 1), ("fr.steps", 1, 2**48),
                             # Written to config.toml, a larger one passed TOML's 64-bit integers.
                             ("checkpoint_every", 1, 2**63), ("log_every", 1, 2**63),
                             *((f"{stage}.optim.warmup_steps", 0, 2**63) for stage in ("fr", "align", "fuse")),
                             ("align.num_prototypes", 1, 2**20), *EVALUATION_SIZE_BOUNDS)),
    ("data.train_degradation=blurry", r"data\.train_degradation: unknown recipe step 'blurry'"),
    ("data.degradation=down24+jpeg0", r"data\.degradation: recipe step 'jpeg0'"),
    ("data.train_degrade_p=1.5", r"data\.train_degrade_p must lie in"),
    ("model.backbone=resnet50", r"model\.backbone must be one of"),
    ("model.dropout=1", r"model\.dropout must lie in"),
    ("seed=-1", r"^seed must be an integer in \[0, 4294967296\), got -1"),
    ("seed=4294967296", r"^seed must be an integer in \[0, 4294967296\), got 4294967296"),
    ("data.synthetic_seed=-1", r"data\.synthetic_seed must be an integer in \[0, 4294967296\)"),
    ("data.synthetic_seed=9223372036854775807", r"data\.synthetic_seed must be an integer in \[0, 4294967296\)"),
    ("data.synthetic_version=0", rf"^data\.synthetic_version must be an integer in \[1, {GENERATOR_VERSION + 1}\), got 0$"),
    (f"data.synthetic_version={GENERATOR_VERSION + 1}", r"^data\.synthetic_version must be an integer in \[1, "),
    ("data.synthetic_version=1.0", r"^data\.synthetic_version must be of type int, got 1\.0"),
    ("data.image_size=100000", r"^data\.image_size must be an integer in \[16, 1025\), got 100000$"),
    ("data.image_size=15", r"^data\.image_size must be an integer in \[16, 1025\), got 15$"),
    ("fr=3", r"^fr must be a table, got 3$"),
    ("fr.optim=3", r"^fr\.optim must be a table, got 3$"),
    # Cases a review's mutations showed unchecked: each check below could be dropped with every test passing.
    ("fr.optim.lr=true", r"^fr\.optim\.lr must be of type float"),
    ("fr.optim.weight_decay=inf", r"^fr\.optim\.weight_decay must lie in"),
    ("fuse.optim.min_lr_ratio=5", r"^fuse\.optim\.min_lr_ratio must lie in"),
    ("align.cicl_weight=-1", r"^align\.cicl_weight must lie in"),
    ("align.intra_weight=nan", r"^align\.intra_weight must lie in"),
    ("precision=fp16", r"^precision must be one of"),
    ("device=tpu", r"^device must be one of"),
    ("fuse.focal=1", r"^fuse\.focal must be of type bool, got 1 \(int\)$"),
    ("model.freeze_text_encoder=0", r"^model\.freeze_text_encoder must be of type bool, got 0 \(int\)$"),
    # A weight past float32's maximum, finite in Python, made its stage's loss inf at the first step.
    *((f"{key}={value}", rf"^{re.escape(key)} must lie in \[0\.0, {re.escape(repr(FLOAT32_MAX))}\], got {shown}$")
      for key in LOSS_WEIGHTS for value, shown in (("inf", "inf"), ("3.4028236e38", r"3\.4028236e\+38"))),
    ('evaluation.splits={clean = ""}', r"^evaluation\.splits must map report names to non-empty split names"),
    # TOML's integers have no size limit: float() of one raised an OverflowError naming no key.
    *((f"{key}={10**400}", rf"^{re.escape(key)} must be of type float, got an integer too large for one "
                           r"\(about 10\^400\)$")
      for key in ("fr.optim.lr", "align.gamma1", "data.train_degrade_p")),
    (f"fr.optim.lr={-10**400}", r"^fr\.optim\.lr must be of type float, got an integer too large for one"),
    # Every stage's optimizer table, each check of which a review found tested for one stage only (reading fr's lr
    # for every stage passed).
    *((f"{stage}.optim.{override}", rf"^{stage}\.optim\.{message}") for stage in ("fr", "align", "fuse")
      for override, message in (("optimizer=adam", r"optimizer must be one of"),
                                ("schedule=linear", r"schedule must be one of"),
                                ("lr=0", r"lr must be a finite positive number"),
                                ("weight_decay=-1", r"weight_decay must lie in \[0\.0, inf\)"),
                                ("momentum=1.0", r"momentum must lie in \[0\.0, 1\.0\)"),
                                ("grad_clip=-1", r"grad_clip must lie in \[0\.0, inf\)"),
                                ("min_lr_ratio=1.5", r"min_lr_ratio must lie in \[0\.0, 1\.0\]"),
                                ("warmup_steps=-1", r"warmup_steps must be an integer in \[0, 9223372036854775808\), "
                                                    r"got -1$"))),
    ("data.cache_dir=07:30:00", r"^data\.cache_dir must be of type str, got datetime\.time\(7, 30\) \(time\); "
                                r"TOML reads an unquoted number, date or boolean as one"),
    # What followed a line break was read as other settings and dropped, or kept in a bare word.
    *((override, rf"^override {re.escape(override.split('=')[0])}: {re.escape(repr(override.split('=', 1)[1]))} spans "
                 r"more than one line; give each setting its own --set")
      for override in ("fr.steps=50\nalign.steps=20", "seed=3\n[fr]\nsteps = 1", 'data.manifest="a.jsonl"\nb.jsonl = 1',
                       "data.cache_dir=mycache\nalign.steps=20", "data.cache_dir=my\rcache")),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("quick", [override])


@pytest.mark.parametrize("key, raw", [("fr.optim.lr", ".5"), ("fr.optim.lr", "5."), ("fr.steps", "010"),
                                      ("align.gamma1", "Inf"), ("fr.optim.lr", "-.5e-3")])
def test_a_number_python_reads_but_toml_does_not_is_refused_with_tomls_spelling(key, raw):
    """--set fr.optim.lr=.5 is a bare word, a string, to TOML: the error said it got a string, not how to write the
    number."""
    float(raw)  # a number to Python
    kind = type(load_config("quick")._get(key)).__name__
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be of type {kind}, got {re.escape(repr(raw))} "
                                         r"\(str\); TOML writes numbers as 0\.5, 5\.0, 10, inf \(lower case\), without "
                                         r"leading zeros$"):
        load_config("quick", [f"{key}={raw}"])
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be of type {kind}, got 'abc' \(str\)$"):
        load_config("quick", [f"{key}=abc"])  # no number: no hint


def test_overrides_given_as_one_string_are_refused():
    """Iterated, "fr.steps=3" was read as overrides "f", "r", ...: the error named the character 'f'."""
    with pytest.raises(TypeError, match=r"^overrides must be a list of 'key=value' strings, got the string "
                                        r"'fr\.steps=3'$"):
        load_config("quick", "fr.steps=3")
    assert load_config("quick", ("fr.steps=30",)).fr.steps == 30
    assert load_config("quick", (override for override in ["fr.steps=31"])).fr.steps == 31


@pytest.mark.parametrize("overrides", [[("fr.steps", 5)], ["fr.steps=5", None], [b"fr.steps=5"], b"fr.steps=5",
                                       {"fr.steps": 5}, 5])
def test_overrides_that_are_not_strings_are_refused_naming_the_argument(overrides):
    """A pair, None or bytes failed with an AttributeError naming nothing; a dict was read as its keys, its values
    dropped."""
    with pytest.raises(TypeError, match=rf"^overrides must be a list of 'key=value' strings, got "
                                        rf"{re.escape(repr(overrides))}$"):
        load_config("quick", overrides)


def test_the_largest_image_size_is_accepted():
    assert load_config("quick", ["data.image_size=1024"]).data.image_size == 1024


def test_the_largest_step_counts_and_intervals_are_accepted():
    """Steps below 2^48; intervals and warm-ups (a stage left out of stages takes any) below TOML's 2^63, so that
    a run's config.toml with checkpoint_every = 10^15 (checkpoints at the stage ends alone) still loads."""
    steps, largest = 2**48 - 1, 2**63 - 1
    config = load_config("quick", [f"fr.steps={steps}"] + [f"{key}={largest}" for key in ("checkpoint_every",
                                                                                            "log_every")]
                         + ['stages=["fr"]', f"align.optim.warmup_steps={largest}"])
    assert config.fr.steps == steps
    assert config.checkpoint_every == config.log_every == config.align.optim.warmup_steps == largest
    values = tomllib.loads(to_toml(load_config("quick")))
    values["checkpoint_every"] = 10**15
    assert config_from_dict(values).checkpoint_every == 10**15  # as tgfr evaluate and --resume read config.toml


def test_the_largest_dropout_below_1_is_accepted():
    largest = math.nextafter(1.0, 0.0)
    assert load_config("quick", [f"model.dropout={largest!r}"]).model.dropout == largest


def test_the_largest_evaluation_sizes_are_accepted():
    config = load_config("quick", [f"{key}={high - 1}" for key, _, high in EVALUATION_SIZE_BOUNDS])
    for key, _, high in EVALUATION_SIZE_BOUNDS:
        assert config._get(key) == high - 1, key


def test_an_integer_too_large_for_a_float_is_refused_by_key_from_every_source(tmp_path):
    """An override, a preset file and a run's config.toml (--resume) with such an integer stopped tgfr train with an
    OverflowError traceback naming no key; now each says it in one line naming the key (and the file)."""
    huge = 10**400
    error = "fr.optim.lr must be of type float, got an integer too large for one (about 10^400)"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--set", f"fr.optim.lr={huge}", "--print-config"])
    assert str(exit_.value.code) == f"tgfr train: error: {error}"
    text = to_toml(load_config("quick"))
    fr_table = text.index("[fr.optim]")  # the first table with an lr
    text = text[:fr_table] + re.sub(r"(?m)^lr = .*$", f"lr = {huge}", text[fr_table:], count=1)
    preset = tmp_path / "huge.toml"
    preset.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", str(preset), "--print-config"])
    assert str(exit_.value.code) == f"tgfr train: error: preset file {preset}: {error}"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(run), "--resume", "--print-config"])
    assert str(exit_.value.code) == (f"tgfr train: error: --resume: {run / 'config.toml'} is not a valid run config: "
                                     f"{error}")


def test_replacing_a_config_table_with_an_inline_table_names_the_override_not_the_preset():
    """An inline table replaces the whole table, as TOML says: the keys it leaves out are missing because of the
    override, which the error says, with the dotted form that sets one key. A table setting (evaluation.splits)
    is still replaced whole."""
    names = [f.name for f in dataclasses.fields(FRStageConfig)]
    with pytest.raises(ValueError, match=re.escape(f"override 'fr={{steps=5}}' replaces the whole [fr] table, which "
                                                   f"then lacks {[f'fr.{name}' for name in names if name != 'steps']}; "
                                                   f"set single keys instead, e.g. fr.steps=5")):
        load_config("quick", ["fr={steps=5}"])
    with pytest.raises(ValueError, match=r"^override 'fr\.optim=\{lr=0\.1\}' replaces the whole \[fr\.optim\] table, "
                                         r"which then lacks \['fr\.optim\.optimizer', .*e\.g\. fr\.optim\.lr=0\.1$"):
        load_config("quick", ["fr.optim={lr=0.1}"])
    # A misspelled key is named as unknown, not given as the example to follow.
    with pytest.raises(ValueError, match=re.escape(f"override 'fr={{stepz=5}}': unknown config key(s) ['fr.stepz']; fr "
                                                   f"accepts {names}")):
        load_config("quick", ["fr={stepz=5}"])
    optim_names = [f.name for f in dataclasses.fields(OptimConfig)]
    with pytest.raises(ValueError, match=re.escape(f"override 'fr={{steps=5, optim={{lz=1}}}}': unknown config key(s) "
                                                   f"['fr.optim.lz']; fr.optim accepts {optim_names}")):
        load_config("quick", ["fr={steps=5, optim={lz=1}}"])
    # A complete [fr] holding an incomplete optim table: the keys optim lacks are the override's doing too.
    fr = {name: value for name, value in config_to_dict(load_config("quick"))["fr"].items() if name != "optim"}
    nested = "fr={" + ", ".join(f"{name} = {json.dumps(value)}" for name, value in fr.items()) + ", optim={lr=0.1}}"
    lacking = [f"fr.optim.{f.name}" for f in dataclasses.fields(OptimConfig) if f.name != "lr"]
    with pytest.raises(ValueError, match=re.escape(f"override {nested!r} replaces the whole [fr] table, which then "
                                                   f"lacks {lacking}; set single keys instead, e.g. "
                                                   f"fr.steps={fr['steps']}")):
        load_config("quick", [nested])
    assert load_config("quick", ["fr.steps=50"]).fr.steps == 50
    complete = config_to_dict(load_config("quick"))["fr"]["optim"]  # a complete inline table is taken
    inline = "{" + ", ".join(f"{name} = {json.dumps(value)}" for name, value in complete.items()) + "}"
    assert config_to_dict(load_config("quick", [f"fr.optim={inline}"]).fr.optim) == complete
    assert load_config("quick", ['evaluation.splits={low = "test"}']).evaluation.splits == {"low": "test"}


@pytest.mark.parametrize("parts, message", [
    ({"fuse": FuseStageConfig(focal="no")}, r"^fuse\.focal must be of type bool, got 'no' \(str\); TOML writes a "
                                            r"boolean as true or false \(lower case\)$"),
    ({"model": ModelConfig(freeze_text_encoder="false")}, r"^model\.freeze_text_encoder must be of type bool, got "),
    ({"data": DataConfig(train_degrade_p="0.5")}, r"^data\.train_degrade_p must be of type float, got '0\.5' \(str\)$"),
    ({"data": DataConfig(train_degrade_p=True)}, r"^data\.train_degrade_p must be of type float, got True \(bool\)$"),
    ({"fr": FRStageConfig(optim=OptimConfig(lr=10**400))}, r"^fr\.optim\.lr must be of type float, got an integer too"),
    # Refused, not taken as a list: one rule for a config built in Python and config.toml.
    ({"stages": ("fr", "align", "fuse")},
     r"^stages must be a list of strings, got \('fr', 'align', 'fuse'\) \(tuple\)$"),
    ({"fr": {"steps": 5}}, r"^fr must be a FRStageConfig, got \{'steps': 5\} \(dict\)$"),
])
def test_a_config_built_in_python_has_its_types_checked_by_key(parts, message):
    """A script calling tgfr.train.run.train builds its config in Python: focal = "no" trained with the focal
    loss (truthy), and a wrong type was written to config.toml, which --resume then refused."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**parts)


def test_a_config_built_in_python_refuses_each_wrong_type_as_config_toml_does():
    """For every setting, the error of a config built in Python with a value of no setting's type equals the
    one config_from_dict (--resume, tgfr evaluate) gives for that value in config.toml."""
    for key in sorted(flat_keys(config_to_dict(TrainConfig()))):
        *tables, name = key.split(".")
        config = TrainConfig()
        setattr(functools.reduce(getattr, tables, config), name, None)
        with pytest.raises(ValueError) as built:
            dataclasses.replace(config)  # built again from its (nested) settings, as a script would
        values = config_to_dict(TrainConfig())
        functools.reduce(dict.get, tables, values)[name] = None
        with pytest.raises(ValueError) as read:
            config_from_dict(values)
        assert str(built.value) == str(read.value), key
        assert re.fullmatch(rf"{re.escape(key)} must be .*, got None \(NoneType\)", str(read.value)), key
    fused = TrainConfig(fuse=FuseStageConfig(arcface_scale=16)).fuse.arcface_scale
    assert fused == 16.0 and type(fused) is float  # as an override's 16 is stored


def test_float32s_maximum_is_a_scale_a_gamma_and_a_loss_weight():
    config = load_config("quick", [f"{key}={FLOAT32_MAX!r}" for key in ("align.gamma1", "fuse.arcface_scale",
                                                                        *LOSS_WEIGHTS)])
    assert (config.align.gamma1, config.fuse.arcface_scale) == (FLOAT32_MAX, FLOAT32_MAX)
    assert [config._get(key) for key in LOSS_WEIGHTS] == [FLOAT32_MAX] * len(LOSS_WEIGHTS)


def test_wrcl_logits_must_fit_float32():
    """WRCL's logits are gamma3 * score, |score| <= gamma2 + log T with T = max_length - 2 word slots
    (a log-sum-exp of T terms gamma2 * cos); the cross-entropy subtracts two of them."""
    config = load_config("quick")
    gamma2, words = config.align.gamma2, config.model.max_length - 2
    limit = FLOAT32_MAX / 2 / (gamma2 + math.log(words))
    assert load_config("quick", [f"align.gamma3={limit * 0.999!r}"]).align.gamma3 == limit * 0.999
    with pytest.raises(ValueError, match=r"^align\.gamma3 \* \(align\.gamma2 \+ log\(model\.max_length - 2\)\) must be at "
                                         r"most 1\.70141e\+38 .*got align\.gamma2 = 5, align\.gamma3 = 1e\+38, "
                                         r"model\.max_length = 24$"):
        load_config("quick", ["align.gamma3=1e38"])


@pytest.mark.parametrize("overrides, message", [
    (["fr.steps=3"], "fr.optim.warmup_steps = 10 must be less than fr.steps = 3"),
    (["align.steps=10"], "align.optim.warmup_steps = 10 must be less than align.steps = 10"),
    (["fuse.steps=7", "fuse.optim.warmup_steps=7"], "fuse.optim.warmup_steps = 7 must be less than fuse.steps = 7"),
])
def test_a_warm_up_as_long_as_the_stage_is_refused(overrides, message):
    """The quick preset warms up for 10 steps: a stage of at most 10 steps would never reach its full rate."""
    assert load_config("quick").fr.optim.warmup_steps == 10
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_config("quick", overrides)


def test_a_warm_up_of_steps_minus_one_and_stages_that_do_not_train_are_accepted(tmp_path):
    config = load_config("quick", ["fr.steps=11"])  # the full rate at the last two steps, no cosine phase
    assert [lr_factor(step, 11, config.fr.optim) for step in range(8, 11)] == [0.9, 1.0, 1.0]
    # Stages left out never run their schedule; neither does fr when it only loads model.backbone_weights.
    assert load_config("quick", ['stages=["fr"]', "align.steps=1", "fuse.steps=1"]).stages == ["fr"]
    weights = tmp_path / "backbone.pth"
    config = load_config("quick", ["fr.steps=1", f'model.backbone_weights="{weights}"'])
    assert config.trained_stages == ["align", "fuse"]


@pytest.mark.parametrize("stages", [["align", "fuse"], ["align"]])
def test_stages_without_fr_need_backbone_weights(stages):
    """align and fuse keep the backbone frozen: without fr or released weights it would stay random."""
    override = "stages=" + json.dumps(stages)
    with pytest.raises(ValueError, match=re.escape(f"stages = {stages} leave out fr, so model.backbone_weights "
                                                   "must name a trained backbone")):
        load_config("quick", [override])
    assert load_config("quick", [override, 'model.backbone_weights="b.pth"']).trained_stages == stages


def test_an_fr_stage_whose_loss_weights_are_both_0_is_refused_unless_it_only_loads_weights():
    """It trained every step at loss 0 and gradient norm 0, leaving align and fuse a random, frozen backbone."""
    zero = ["fr.ce_weight=0.0", "fr.coreface_weight=0.0"]
    with pytest.raises(ValueError, match=re.escape("fr: both loss weights (fr.ce_weight, fr.coreface_weight) are 0")):
        load_config("quick", zero)
    assert load_config("quick", zero + ['model.backbone_weights="b.pth"']).trained_stages == ["align", "fuse"]
    assert load_config("quick", ["fr.ce_weight=0.0"]).fr.coreface_weight > 0
    with pytest.raises(ValueError, match=r"^fr: both loss weights \(fr.ce_weight, fr.coreface_weight\) are 0, so the "
                                         r"stage would train nothing: give one a weight$"):  # no later stage to name
        load_config("quick", zero + ['stages=["fr"]'])


def test_read_run_config_of_an_empty_folder_name_is_refused_not_the_current_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(to_toml(load_config("quick")))
    with pytest.raises(ValueError, match="^out is empty: name the run folder$"):
        read_run_config("")
    assert read_run_config(".") == load_config("quick")


@pytest.mark.parametrize("value", ["0.0", "-0.01", "1.5", "nan"])
def test_align_text_encoder_lr_scale_must_lie_in_0_1(value):
    with pytest.raises(ValueError, match=re.escape(f"align.text_encoder_lr_scale must be a finite positive number "
                                                   f"of at most 1, got {float(value)}")):
        load_config("quick", [f"align.text_encoder_lr_scale={value}"])


def test_a_run_written_before_align_text_encoder_lr_scale_trained_its_encoder_at_the_heads_rate():
    """Such a run's config.toml reads as scale 1, the rate it trained with (one group, its checkpoints' optimizer
    state); a new run's presets name 0.01."""
    values = tomllib.loads(re.sub(r"(?m)^text_encoder_lr_scale = .*\n", "", to_toml(load_config("quick"))))
    assert "text_encoder_lr_scale" not in values["align"]
    assert config_from_dict(values).align.text_encoder_lr_scale == 1.0
    assert all(load_config(preset).align.text_encoder_lr_scale == 0.01 for preset in preset_names())


@pytest.mark.parametrize("stages, weights", [(["fr", "fuse"], ""), (["fuse"], "b.pth")])
def test_fuse_without_align_is_refused_also_with_backbone_weights(tmp_path, stages, weights):
    """fuse keeps the alignment heads frozen and model.backbone_weights holds no heads: without align it would
    learn on random features. A run's own config.toml with such stages still loads (an older tgfr trained them)."""
    overrides = ["stages=" + json.dumps(stages), f'model.backbone_weights="{weights}"']
    message = re.escape(f"stages = {stages} run fuse without align, which trains the alignment heads that fuse reads")
    with pytest.raises(ValueError, match=message):
        load_config("quick", overrides)
    values = tomllib.loads(to_toml(load_config("quick", [f'model.backbone_weights="{weights}"'])))
    values["stages"] = stages
    config = config_from_dict(values)  # as tgfr evaluate and --resume read config.toml
    assert config.stages == stages
    with pytest.raises(ValueError, match=message):  # a fresh training with it is refused before writing
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # fr alone trains a backbone for model.backbone_weights; align without fuse leaves nothing random behind it.
    for allowed in (["fr"], ["fr", "align"]):
        assert load_config("quick", ["stages=" + json.dumps(allowed)]).stages == allowed


@pytest.mark.parametrize("overrides, accepted", [
    ([], False),
    (['stages=["align", "fuse"]'], False),
    (["align.supervision=weak"], True),  # no label, no masking: other images of the identity are negatives
    (['stages=["fr"]'], True),  # ArcFace (and CoReFace's pull between the two views) need no second one
])
def test_one_identity_per_batch_is_refused_where_identity_supervision_masks_every_pair(overrides, accepted):
    overrides = ["data.identities_per_batch=1", *overrides]
    if accepted:
        assert load_config("quick", overrides).data.identities_per_batch == 1
    else:
        with pytest.raises(ValueError, match=re.escape('data.identities_per_batch must be at least 2 when the align '
                                                       'stage runs with align.supervision = "identity"')):
            load_config("quick", overrides)


def test_print_config_refuses_a_bad_value(capsys):
    with pytest.raises(SystemExit, match=r"tgfr train: error: align\.steps must be an integer in \[1, "):
        main(["train", "--preset", "quick", "--set", "align.steps=0", "--print-config"])
    assert capsys.readouterr().out == ""


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


def test_toml_round_trip_of_keys_and_strings_that_need_quoting_or_escapes():
    """Inline-table keys that are not bare TOML keys, and strings with control characters, quotes and
    backslashes, read back as written (a run's config.toml is what --resume reads)."""
    config = load_config("quick")
    config.evaluation.splits = {"low res": "test", "v1.2": "test_v1.2", 'say "hi"': "a\\b", "caf\u00e9": "t",
                                "tab\tkey": "y"}
    config.data.manifest = "a\nb\r\t\x00\x1f\x7f\b\f\"q\"\\c.jsonl"
    config.data.cache_dir = "caf\u00e9 \U0001f600"
    text = to_toml(config)
    assert config_from_dict(tomllib.loads(text)) == config
    # Both strings and keys went through the escapes: the text holds no raw control character.
    assert not any(ord(c) < 0x20 and c != "\n" or ord(c) == 0x7F for c in text)


@pytest.mark.parametrize("splits, bad", [({"a/b": "test"}, "a/b"), ({"": "test"}, ""), ({"a\\b": "test"}, "a\\b"),
                                         ({"clean": "test", "x\0y": "test_degraded"}, "x\0y")])
def test_report_names_that_cannot_name_files_are_rejected(splits, bad):
    """A report name becomes part of file names (roc_<name>.png): a path separator or an empty name
    failed only when the first figure was written, after all the embedding work."""
    with pytest.raises(ValueError, match=re.escape("evaluation.splits: report names name the report's files") +
                       ".*" + re.escape(f"got {[bad]}")):
        EvaluationConfig(splits=splits)


@pytest.mark.parametrize("key, value", [
    ("data.manifest", "syn\udcff/manifest.jsonl"), ("data.cache_dir", "cache\udcff"),
    ("model.text_encoder", "\udcffminilm"), ("model.backbone_weights", "w\udcff.pth"),
    ("data.train_split", "train\udcff"), ("evaluation.splits", {"clean": "test\udcff"}),
])
def test_a_string_that_utf8_cannot_encode_is_refused_by_key(key, value):
    """A lone surrogate (Python's stand-in for a non-UTF-8 byte of a file name) cannot be written to config.toml."""
    values = tomllib.loads(to_toml(load_config("quick")))
    table, name = values, key
    while "." in name:
        prefix, name = name.split(".", 1)
        table = table[prefix]
    table[name] = value
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be encodable as UTF-8, as config\.toml is, got "):
        config_from_dict(values)


@pytest.mark.parametrize("splits", [["test"], "test", {}, {"clean": ""}])
def test_evaluation_splits_built_in_python_must_map_report_names_to_split_names(splits):
    """tgfr.evaluation and scripts build the table without TrainConfig's type check first: a list or a string
    failed at .values() with an AttributeError naming nothing."""
    with pytest.raises(ValueError, match=r"^evaluation\.splits must map report names to non-empty split names, got "
                                         rf"{re.escape(repr(splits))}$"):
        EvaluationConfig(splits=splits)


@pytest.mark.parametrize("key, low, high", EVALUATION_SIZE_BOUNDS)
def test_evaluation_sizes_built_in_python_refuse_a_bool(key, low, high):
    """True lies in every size's range as 1: built without TrainConfig's type check (tgfr.evaluation builds the
    table itself), only the size check refuses it."""
    name = key.removeprefix("evaluation.")
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} must be an integer in \[{low}, {high}\), got True$"):
        EvaluationConfig(**{name: True})


def test_pairs_protocol_needs_impostor_subjects():
    # With no impostor subject, make_verification_pairs has no impostor pair and verification fails after embedding.
    with pytest.raises(ValueError, match='evaluation.impostor_subjects must be >= 1 with evaluation.protocol = '
                                         '"pairs", got 0'):
        EvaluationConfig(protocol="pairs", impostor_subjects=0)
    assert EvaluationConfig(protocol="all_pairs", impostor_subjects=0).impostor_subjects == 0  # unused there
    assert EvaluationConfig(protocol="pairs", impostor_subjects=1).impostor_subjects == 1


def test_the_largest_seeds_are_accepted():
    config = load_config("quick", [f"seed={2**32 - 1}", f"data.synthetic_seed={2**32 - 1}"])
    assert config.seed == config.data.synthetic_seed == 2**32 - 1


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """Only a file is taken for a path: a folder ./quick (e.g. runs) leaves the packaged preset in place;
    a name that is neither a file nor a packaged preset lists the packaged ones."""
    monkeypatch.chdir(tmp_path)
    for name in preset_names():
        (tmp_path / name).mkdir()
        assert find_preset(name) == PRESET_DIR / f"{name}.toml"
    assert load_config("quick") == config_from_dict(tomllib.loads((PRESET_DIR / "quick.toml").read_text()))
    (tmp_path / "mine").write_text(to_toml(load_config("quick", ["seed=5"])))
    assert load_config("mine").seed == 5  # an existing file is a path, with or without .toml
    with pytest.raises(ValueError, match=re.escape(f"preset 'other' is neither a file nor a packaged preset "
                                                   f"(packaged presets: {preset_names()})")):
        load_config("other")
    # Nor does a broken link or a pipe named like one; named otherwise, it is said what it is.
    for name in preset_names():
        (tmp_path / name).rmdir()
    (tmp_path / "quick").symlink_to(tmp_path / "unmounted" / "runs")
    os.mkfifo(tmp_path / "default")
    assert [find_preset(name) for name in ("quick", "default")] == [PRESET_DIR / "quick.toml", PRESET_DIR / "default.toml"]
    (tmp_path / "runs").symlink_to(tmp_path / "unmounted" / "runs")
    with pytest.raises(ValueError, match=r"^preset 'runs': runs is a broken symbolic link"):
        find_preset("runs")


@pytest.mark.parametrize("key, value, message", [
    ("fr.steps", 3, "fr.optim.warmup_steps = 10 must be less than fr.steps = 3"),
    ("data.identities_per_batch", 1, "data.identities_per_batch must be at least 2"),
    ("data.synthetic_identities", 5, "data.synthetic_identities must be at least 6"),
])
def test_a_run_trained_before_the_recipe_checks_stays_evaluable_and_resumable(tmp_path, key, value, message):
    """check_training_recipe judges a fresh training's recipe; a run's own config.toml, written by a tgfr
    that did not check it, must still load (tgfr evaluate, --resume)."""
    values = tomllib.loads(to_toml(load_config("quick")))
    section, name = key.split(".")
    values[section][name] = value
    config = config_from_dict(values)  # as tgfr evaluate and --resume read config.toml
    with pytest.raises(ValueError, match=re.escape(message)):
        config.check_training_recipe()
    with pytest.raises(ValueError, match=re.escape(message)):  # a fresh training with it is still refused
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, message", [
    ("data.train_degrade_p", 7.0, "data.train_degrade_p must lie in [0.0, 1.0], got 7.0"),
    ("fr.ce_weight", -1.0, "fr.ce_weight"),
    ("model.freeze_text_encoder", "no", "model.freeze_text_encoder must be of type bool"),
    # The evaluation table's values too, which only building it checked: tgfr evaluate refused the run's config.toml.
    ("evaluation.max_rank", 0, "evaluation.max_rank must be an integer in [1, 1048576), got 0"),
    ("evaluation.splits", {"a/b": "test"}, "evaluation.splits: report names name the report's files"),
])
@pytest.mark.parametrize("resume", [False, True])
def test_train_checks_a_config_changed_after_it_was_built(tmp_path, key, value, message, resume):
    """A script's `config.fr.ce_weight = -1.0` after load_config trained (gradient ascent) and wrote a
    config.toml that --resume (or tgfr evaluate) refused."""
    config = load_config("quick")
    section, name = key.split(".")
    setattr(getattr(config, section), name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config, tmp_path / "run", resume=resume)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_generates_the_newest_synthetic_version(preset):
    assert load_config(preset).data.synthetic_version == GENERATOR_VERSION


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_bootstraps_enough_resamples_for_its_interval_bounds(preset):
    """A 95 % bound is the 2.5 % quantile of the resamples: of 50, the one or two most extreme, which put a
    quick run's rank-1 difference TGFR - image only below 0 or above it depending on the bootstrap seed."""
    assert load_config(preset).evaluation.bootstrap_resamples >= 1000


def test_a_run_written_before_the_synthetic_version_was_recorded_reads_as_version_1(tmp_path):
    """A run's config.toml without data.synthetic_version was trained on version 1 (as with every tgfr
    before the key, but the reverted commits 3db1e1f to 3874a79); one that records a version keeps it.
    A preset must still name it (presets set every key)."""
    text = re.sub(r"(?m)^synthetic_version = .*\n", "", to_toml(load_config("quick")))
    values = tomllib.loads(text)
    assert "synthetic_version" not in values["data"]
    before = {name: dict(table) if isinstance(table, dict) else table for name, table in values.items()}
    assert config_from_dict(values).data.synthetic_version == 1
    assert values == before  # the caller's dict is left as it was
    assert config_from_dict({**values, "data": {**values["data"], "synthetic_version": GENERATOR_VERSION}}) \
        .data.synthetic_version == GENERATOR_VERSION
    with pytest.raises(ValueError, match=re.escape("config is missing key(s) ['data.synthetic_version']")):
        (tmp_path / "old.toml").write_text(text)
        load_config(str(tmp_path / "old.toml"))


def test_a_run_written_before_fusion_out_dim_was_a_setting_reads_as_the_640_wide_linear_fusion_it_trained():
    text = re.sub(r"(?m)^fusion_out_dim = .*\n", "", to_toml(load_config("quick", ["model.fusion=\"linear\""])))
    values = tomllib.loads(text)
    assert "fusion_out_dim" not in values["model"]
    assert config_from_dict(values).model.fusion_out_dim == 640
    assert load_config("quick").model.fusion_out_dim == 160  # a new run: fcfm's default width


@pytest.mark.parametrize("fusion, width", [("fcfm", 7 + 2 * 64), ("linear", 9), ("concat", 2 * 64)])
def test_each_fusion_reads_its_own_width_setting(tiny_overrides, fusion, width):
    from tgfr.train.run import build_model

    config = load_config("quick", tiny_overrides + [f'model.fusion="{fusion}"', "model.fine_dim=7",
                                                    "model.fusion_out_dim=9", "model.dim=64"])
    assert build_model(config).fused_dim == width


def test_set_changes_one_entry_of_the_evaluation_splits_table(capsys):
    """An entry of a table setting is a key: `tgfr train --set` changes the entries the preset holds
    (as it always did), refuses a new one (the whole table is set for that) and a key past an entry."""
    main(["train", "--preset", "quick", "--set", 'evaluation.splits.clean="test_degraded"', "--print-config"])
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["evaluation"]["splits"] == {"clean": "test_degraded", "degraded": "test_degraded"}
    # The message says how to add the entry: the whole table, with the entries it holds.
    suggested = 'evaluation.splits={clean = "test", degraded = "test_degraded", blur = "test_blur"}'
    with pytest.raises(ValueError, match=re.escape("override 'evaluation.splits.blur=test_blur': unknown key "
                                                   "evaluation.splits.blur; known: clean, degraded; to add an entry, "
                                                   f"give the whole table: --set '{suggested}'") + "$"):
        load_config("quick", ["evaluation.splits.blur=test_blur"])
    assert load_config("quick", [suggested]).evaluation.splits == {"clean": "test", "degraded": "test_degraded",
                                                                    "blur": "test_blur"}
    with pytest.raises(ValueError, match=re.escape("unknown key evaluation.splits.blur; known: clean, degraded; to add "
                                                   "an entry, give the whole table: --set 'evaluation.splits={clean = "
                                                   '"test", degraded = "test_degraded", blur = "..."}\'') + "$"):
        load_config("quick", ["evaluation.splits.blur.x=1"])
    with pytest.raises(ValueError, match=r"^override 'evaluation\.splits\.clean\.x=1': evaluation\.splits\.clean "
                                         r"is not a table$"):
        load_config("quick", ["evaluation.splits.clean.x=1"])
    assert load_config("quick", ['evaluation.splits={blur = "test_blur"}']).evaluation.splits == {"blur": "test_blur"}
    # A split named with a quote: the suggested --set is still one shell word, which sets the table it names.
    with pytest.raises(ValueError) as refused:
        load_config("quick", ["evaluation.splits.blur=bob's_test"])
    words = shlex.split(str(refused.value).split("--set ", 1)[1])
    assert len(words) == 1 and load_config("quick", words).evaluation.splits["blur"] == "bob's_test"


@pytest.mark.parametrize("key", ['evaluation.splits."v1.2"', "evaluation.splits.'a=b'", 'evaluation . splits."x\\"y"',
                                 "'fr'.steps"])
def test_an_override_key_may_quote_its_parts_as_toml_does(key):
    """A report name may hold a dot, which --print-config writes quoted (splits = { "v1.2" = "test" }): `--set`
    took the quotes and the dot inside them as part of the key."""
    keys, value = parse_override(f"{key}=test_degraded")
    table = tomllib.loads(f"{key} = 0")  # TOML's own reading of the dotted key
    expected = []
    while isinstance(table, dict):
        [(part, table)] = table.items()
        expected.append(part)
    assert (keys, value) == (expected, "test_degraded")


def test_set_changes_an_evaluation_splits_entry_whose_name_holds_a_dot(capsys):
    splits = 'evaluation.splits={"v1.2" = "test", clean = "test"}'
    main(["train", "--preset", "quick", "--set", splits, "--print-config"])
    printed = capsys.readouterr().out
    assert 'splits = { "v1.2" = "test", clean = "test" }' in printed  # the key as the override writes it
    config = load_config("quick", [splits, 'evaluation.splits."v1.2"=test_degraded'])
    assert config.evaluation.splits == {"v1.2": "test_degraded", "clean": "test"}
    suggested = 'evaluation.splits={"v1.2" = "test", clean = "test", "v1.3" = "x"}'
    with pytest.raises(ValueError, match=re.escape("""override 'evaluation.splits."v1.3"=x': unknown key """
                                                   """evaluation.splits."v1.3"; known: "v1.2", clean; to add an """
                                                   f"entry, give the whole table: --set '{suggested}'") + "$"):
        load_config("quick", [splits, 'evaluation.splits."v1.3"=x'])
    assert load_config("quick", [splits, suggested]).evaluation.splits == {"v1.2": "test", "clean": "test", "v1.3": "x"}
    with pytest.raises(ValueError, match=r"""^override key evaluation\.splits\."v1\.2 is not a valid TOML dotted """
                                         r"key"):
        load_config("quick", [splits, 'evaluation.splits."v1.2=x'])


def _synthetic_set_accepts(identities):
    """Whether the synthetic generator takes `identities` with the fractions training generates with."""
    try:
        SyntheticConfig(identities=identities)
    except ValueError:
        return False
    return True


def test_too_few_synthetic_identities_are_refused_when_the_config_is_read(capsys):
    """The generator's own refusal is the reference: the smallest count it takes is the minimum, named
    by --print-config (before any generation) and stated in README; a manifest makes the count moot."""
    accepted = [identities for identities in range(1, 40) if _synthetic_set_accepts(identities)]
    smallest = accepted[0]
    assert accepted == list(range(smallest, 40))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--set", f"data.synthetic_identities={smallest - 1}", "--print-config"])
    assert str(exit_.value.code) == (
        f"tgfr train: error: data.synthetic_identities must be at least {smallest} without a data.manifest (fewer "
        f"leave the synthetic dataset's val or test split without an identity), got {smallest - 1}")
    assert capsys.readouterr().out == ""
    assert load_config("quick", [f"data.synthetic_identities={smallest}"]).data.synthetic_identities == smallest
    assert load_config("quick", ["data.synthetic_identities=1", "data.manifest=m.jsonl"]).data.synthetic_identities == 1
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").split())
    assert f"`data.synthetic_identities` at least {smallest} without a `data.manifest`" in readme
    assert f"fewer than {smallest} identities" in readme


def test_a_preset_file_that_is_not_utf8_is_invalid_toml_naming_the_file(tmp_path):
    """TOML is UTF-8: a preset file with another byte is malformed TOML, named like the run's config.toml
    under --resume, not a bare codec error."""
    preset = tmp_path / "latin1.toml"
    preset.write_bytes('data.manifest = "Jos\u00e9.jsonl"\n'.encode("latin-1"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", str(preset), "--print-config"])
    assert str(exit_.value.code) == (f"tgfr train: error: preset file {preset} is not valid TOML: 'utf-8' codec "
                                     f"can't decode byte 0xe9 in position 20: invalid continuation byte")


@pytest.mark.parametrize("key", ["data.degradation", "data.train_degradation"])
def test_a_down_sampling_the_synthetic_faces_are_too_small_for_is_refused_naming_the_key(key):
    """The synthetic faces are 112 x 112: down112 (or celeba's 112 then down120) was found only once the whole set
    was generated, naming an image of a staging folder already removed, or at a training step."""
    for recipe in ("down112", "celeba+down120"):
        with pytest.raises(ValueError, match=rf"^{re.escape(key)} = '{re.escape(recipe)}' for the synthetic faces: "
                                             r"recipe step 'down1\d\d': 1\d\d must be below both sides of the image, "
                                             r"112 x 112"):
            load_config("quick", [f'{key}="{recipe}"'])
    assert getattr(load_config("quick", [f'{key}="down100+jpeg30"']).data, key.split(".")[1]) == "down100+jpeg30"
    load_config("quick", [f'{key}="down112"', 'data.manifest="elsewhere/manifest.jsonl"'])  # sizes unknown


def test_a_preset_file_and_a_run_config_saved_with_a_byte_order_mark_are_read(tmp_path):
    """Some editors (Windows Notepad) start a UTF-8 file with a byte-order mark, which tomllib took for an
    invalid statement at line 1, column 1."""
    preset = tmp_path / "bom.toml"
    preset.write_text("\ufeff" + to_toml(load_config("quick", ["seed=7"])), encoding="utf-8")
    assert load_config(str(preset)) == load_config("quick", ["seed=7"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes(preset.read_bytes())
    assert main(["train", "--resume", "--out", str(run), "--print-config"]) == 0


def test_toml_nested_past_the_recursion_limit_is_invalid_toml_naming_its_source(tmp_path):
    """tomllib raises RecursionError for arrays nested deeper than Python's recursion limit; a preset
    file, a --set value and a run's config.toml so nested are malformed TOML, named like any other."""
    deep = "[" * 100000 + "]" * 100000
    preset = tmp_path / "deep.toml"
    preset.write_text(f"stages = {deep}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", str(preset), "--print-config"])
    assert str(exit_.value.code).startswith(f"tgfr train: error: preset file {preset} is not valid TOML: ")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--set", f"stages={deep}", "--print-config"])
    assert str(exit_.value.code).startswith("tgfr train: error: override stages: [[[")
    assert "valid TOML" in str(exit_.value.code)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f"seed = {deep}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(run), "--resume"])
    assert str(exit_.value.code).startswith(f"tgfr train: error: --resume: {run / 'config.toml'} is not a valid run config: ")


@pytest.mark.parametrize("override", ["fr.optim.min_lr_ratio=0", "data.train_degrade_p=0", "fr.optim.grad_clip=0",
                                      "data.identities_per_batch=2"])
def test_the_lowest_allowed_values_are_taken(override):
    load_config("quick", [override])


@pytest.mark.parametrize("raw", ["", " ", "\t"])
def test_an_override_without_a_value_is_refused(raw):
    """`--set data.manifest=$MANIFEST` with the variable unset trained on the synthetic set, as data.manifest = ""."""
    with pytest.raises(ValueError, match=r'^override data\.manifest: no value after \'=\'; an empty string is written '
                                         r'data\.manifest=""$'):
        load_config("quick", [f"data.manifest={raw}"])
    assert load_config("quick", ['data.manifest=""']).data.manifest == ""


def test_a_preset_files_errors_name_it_and_set_can_mend_its_values(tmp_path):
    """A user's preset is checked with the overrides in: --set mends a bad value or fills a missing key (an
    older run's config.toml), and an error says which file the value came from."""
    text = re.sub(r"(?m)^synthetic_version = .*\n", "", to_toml(load_config("quick")))
    head, fr = text.split("\n[fr]\n", 1)
    preset = tmp_path / "mine.toml"
    preset.write_text(head + "\n[fr]\n" + re.sub(r"(?m)^steps = \d+$", "steps = 0", fr, count=1), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^preset file {re.escape(str(preset))}: config is missing key\(s\) "
                                         r"\['data\.synthetic_version'\]"):
        load_config(str(preset))
    with pytest.raises(ValueError, match=rf"^preset file {re.escape(str(preset))} with --set: fr\.steps must be an "
                                         r"integer in \[1, "):
        load_config(str(preset), ["data.synthetic_version=1"])
    config = load_config(str(preset), ["data.synthetic_version=1", "fr.steps=50"])
    assert (config.fr.steps, config.data.synthetic_version) == (50, 1)


def test_a_misspelled_key_in_a_preset_file_is_refused(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text(to_toml(load_config("quick")) + "\n[extra]\nstepz = 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['extra'\]"):
        load_config(str(preset))


def _readme_key_tables() -> dict[str, dict[str, str]]:
    """README's *Configuration keys* section: TOML table ("" for the top level, "optim" for the stages' shared
    optimizer table) -> key -> its default column, as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Configuration keys\n")[1].split("\nRun folder:")[0]
    tables: dict[str, dict[str, str]] = {}
    table = None
    for line in section.splitlines():
        if heading := re.match(r"(Top level:|`\[(\w+)(?:\.optim)?\]`)", line):
            table = "optim" if ".optim]" in line else (heading[2] or "")
            tables.setdefault(table, {})
        elif row := re.match(r"\| `(\w+)` \| (.+?) \| ", line):
            tables[table][row[1]] = row[2]
    return tables


def test_readmes_configuration_keys_name_every_preset_key_with_its_default():
    """The table a user reads a key's meaning from lists every key the presets set, in its TOML table, and the
    default preset's value (the quick preset's after a /, where it differs)."""
    tables = _readme_key_tables()
    default, quick = (tomllib.loads(to_toml(load_config(name))) for name in ("default", "quick"))
    expected = {"": {key: value for key, value in default.items() if not isinstance(value, dict)}}
    for name, table in default.items():
        if isinstance(table, dict):
            expected[name] = {key: value for key, value in table.items() if key != "optim"}
            if "optim" in table:
                expected["optim"] = table["optim"]
    assert {name: set(keys) for name, keys in tables.items()} == {name: set(keys) for name, keys in expected.items()}
    for name, keys in expected.items():
        if name == "optim":
            continue  # one table for the three stages' optimizers, which differ in lr
        for key, value in keys.items():
            quick_value = quick[name][key] if name else quick[key]
            shown = [tomllib.loads(f"v = {text.strip(' `')}")["v"] for text in tables[name][key].split(" / ")]
            assert shown == ([value] if quick_value == value else [value, quick_value]), (name, key)
    for stage in ("fr", "align", "fuse"):
        for key, value in default[stage]["optim"].items():
            assert f"`{value!r}`".replace("'", '"') in tables["optim"][key] or f"`{value}`" in tables["optim"][key], \
                (stage, key)


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_evaluation_controls_is_a_boolean_however_the_config_is_made(value):
    """A table built in Python skips the TOML type check: EvaluationConfig itself refuses a value that is not
    True or False (`if config.controls` would take "no" as true), as does TrainConfig.check after a script's
    change and load_config from an override."""
    message = f"evaluation.controls must be true or false, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        EvaluationConfig(controls=value)
    config = load_config("quick")
    config.evaluation.controls = value
    with pytest.raises(ValueError, match=r"^evaluation\.controls must be "):
        config.check()
    if value is not None:
        with pytest.raises(ValueError, match=r"^evaluation\.controls must be of type bool, got "):
            load_config("quick", [f"evaluation.controls={json.dumps(value)}"])
    assert load_config("quick", ["evaluation.controls=false"]).evaluation.controls is False
    assert all(load_config(preset).evaluation.controls is True for preset in preset_names())


@pytest.mark.parametrize("table, key", [("evaluation", "controls"), ("align", "word_softmax")])
def test_a_run_written_before_a_boolean_setting_existed_reads_it_as_true(tmp_path, table, key):
    """A run's config.toml without evaluation.controls or align.word_softmax (an older tgfr's) reads as true: the
    default a new run gets, and for align.word_softmax what the run trained with (the loss always took the softmax
    over words). One that records false keeps it. A preset must still name it (presets set every key)."""
    text = re.sub(rf"(?m)^{key} = .*\n", "", to_toml(load_config("quick")))
    values = tomllib.loads(text)
    assert key not in values[table]
    assert getattr(getattr(config_from_dict(values), table), key) is True
    assert key not in values[table]  # the caller's table is left as it was
    assert getattr(getattr(config_from_dict({**values, table: {**values[table], key: False}}), table), key) is False
    (tmp_path / "old.toml").write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"config is missing key(s) ['{table}.{key}']")):
        load_config(str(tmp_path / "old.toml"))


def test_align_word_softmax_is_on_in_every_preset_and_set_false_is_written_and_read_back(capsys):
    """TGFR's softmax over a caption's words is on by default; `--set align.word_softmax=false` (an unknown key
    before) turns it off, and the run's config.toml (to_toml) keeps it off when read back."""
    assert all(load_config(preset).align.word_softmax is True for preset in preset_names())
    config = load_config("quick", ["align.word_softmax=false"])
    assert config.align.word_softmax is False
    assert config_from_dict(tomllib.loads(to_toml(config))) == config
    assert main(["train", "--preset", "quick", "--set", "align.word_softmax=false", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["align"]["word_softmax"] is False


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_align_word_softmax_is_a_boolean_however_the_config_is_made(value):
    """An override, a config built in Python and a run's config.toml refuse a value that is not true or false,
    naming the key (the loss refuses it too, but only once the stages before align have trained)."""
    message = rf"^align\.word_softmax must be of type bool, got {re.escape(repr(value))} "
    if value is not None:
        with pytest.raises(ValueError, match=message):
            load_config("quick", [f"align.word_softmax={json.dumps(value)}"])
    with pytest.raises(ValueError, match=message):
        TrainConfig(align=dataclasses.replace(TrainConfig().align, word_softmax=value))
    values = tomllib.loads(to_toml(load_config("quick")))
    values["align"]["word_softmax"] = value
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_a_run_written_before_align_word_softmax_was_a_setting_resumes_with_the_word_softmax(tmp_path, tiny_overrides):
    """An older tgfr's run (config.toml and checkpoint without align.word_softmax) trained WRCL with the softmax over
    words: it resumes so, and the next checkpoint records true."""
    from tgfr.train.checkpoint import load_checkpoint, save_checkpoint
    from tgfr.train.run import CHECKPOINT

    run = tmp_path / "run"
    config = load_config("quick", tiny_overrides)
    train(config, run, stop_after=config.fr.steps + 1)  # stopped in the align stage
    config_toml = run / "config.toml"
    config_toml.write_text(re.sub(r"(?m)^word_softmax = .*\n", "", config_toml.read_text(encoding="utf-8")),
                           encoding="utf-8")
    state = load_checkpoint(run / CHECKPOINT)
    del state["config"]["align"]["word_softmax"]
    save_checkpoint(run / CHECKPOINT, state)
    # Turned off in config.toml midway: the checkpoint trained with the softmax, though it does not record it (the
    # key went uncompared, and the rest of the stage trained without it).
    text = config_toml.read_text(encoding="utf-8")
    config_toml.write_text(text.replace("[align]\n", "[align]\nword_softmax = false\n"), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("was trained with align.word_softmax = true, but the run's "
                                                   "config.toml now has align.word_softmax = false")):
        train(read_run_config(run), run, resume=True)
    config_toml.write_text(text, encoding="utf-8")
    assert main(["train", "--resume", "--out", str(run), "--stop-after", "1"]) == 0
    resumed = load_checkpoint(run / CHECKPOINT)
    assert (resumed["stage"], resumed["config"]["align"]["word_softmax"]) == ("align", True)


def test_an_align_stage_whose_every_loss_weight_is_0_is_refused():
    """Each term of weight 0 is skipped: the stage logged a loss of 0 and trained nothing but weight decay."""
    zero = [f"align.{weight}=0.0" for weight in ("wrcl_weight", "cicl_weight", "intra_weight", "identity_weight")]
    with pytest.raises(ValueError, match=r"^align: every loss weight \(align\.wrcl_weight, .*\) is 0"):
        load_config("quick", zero)
    assert load_config("quick", zero[1:]).align.wrcl_weight == 1.0  # one term left is enough
    assert load_config("quick", [*zero, 'stages=["fr"]']).stages == ["fr"]

