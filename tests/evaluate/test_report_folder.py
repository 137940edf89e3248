"""What `tgfr evaluate` reads and leaves in the report folder, on a run of an untrained tiny model:
the manifest it names (never one that a relative path of an older run's config.toml happens to
name in the current directory) and only the pictures of its own report."""

import dataclasses
import os
import re
from urllib.parse import unquote

import pytest

from tgfr.cli import main
from tgfr.evaluation import evaluate
from tgfr.models import save_tgfr_model
from tgfr.train.batches import resolve_manifest
from tgfr.train.config import EvaluationConfig, load_config, to_toml
from tgfr.train.run import build_model

# A 16-identity synthetic set at 32 x 32 and a tiny backbone: the report's files, not its figures, matter here.
TINY = ["data.synthetic_identities=16", "data.synthetic_images_per_identity=4", "data.synthetic_captions_per_image=1",
        "data.image_size=32", "model.width=4", "model.num_features=16", "model.dim=8", "model.fine_dim=4",
        "threads=1", "evaluation.bootstrap_resamples=0", "evaluation.heatmap_captions=1", "evaluation.max_rank=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run folder with config.toml and model/, its config, the synthetic manifest it evaluates)."""
    folder = tmp_path_factory.mktemp("tiny")
    config = load_config("quick", [*TINY, f'data.cache_dir="{folder / "cache"}"'])
    run = folder / "run"
    save_tgfr_model(build_model(config), run / "model")
    (run / "config.toml").write_text(to_toml(config), encoding="utf-8")
    return run, config, resolve_manifest(config.data)


def linked_images(report):
    """The files that report.md's image links point to."""
    return {unquote(target) for target in re.findall(r"!\[[^\]]*\]\(([^)]*)\)", report.read_text(encoding="utf-8"))}


def test_re_evaluating_removes_the_earlier_reports_pictures_only(tiny_run, tmp_path):
    run, config, _ = tiny_run
    out = tmp_path / "report"
    evaluate(run, config, out, device="cpu")
    pictures = {f"{kind}_{name}.png" for kind in ("roc", "cmc", "attention") for name in ("clean", "degraded")}
    assert {p.name for p in out.iterdir()} == pictures | {"report.md", "metrics.json"}
    others = {"notes.png", "roc_clean.txt", "plot_roc_clean.png", "cmc_degraded.png.bak"}
    for name in others:
        (out / name).write_bytes(b"not the report's")
    (out / "roc_folder.png").mkdir()

    lowq = dataclasses.replace(config, evaluation=EvaluationConfig(splits={"lowq": "test_degraded"},
                                                                   heatmap_captions=0, bootstrap_resamples=0))
    report = evaluate(run, lowq, out, device="cpu")
    assert {p.name for p in out.iterdir()} == {"roc_lowq.png", "cmc_lowq.png", "report.md", "metrics.json",
                                               "roc_folder.png", *others}
    assert linked_images(report) == {"roc_lowq.png", "cmc_lowq.png"}
    assert all((out / name).read_bytes() == b"not the report's" for name in others)


def test_a_relative_manifest_of_an_older_run_is_refused_and_manifest_is_named_absolute(tiny_run, tmp_path,
                                                                                       monkeypatch):
    """An older tgfr wrote data.manifest as given, relative to a directory config.toml does not record:
    evaluate asks for --manifest rather than read whatever that path names in the current directory."""
    run, config, manifest = tiny_run
    project = tmp_path / "project"
    project.mkdir()
    (project / "data").symlink_to(manifest.parent)
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "model").symlink_to(run / "model")
    relative = f"data/{manifest.name}"
    old = dataclasses.replace(config, data=dataclasses.replace(config.data, manifest=relative))
    (old_run / "config.toml").write_text(to_toml(old), encoding="utf-8")
    monkeypatch.chdir(project)  # where the relative path names a manifest: still refused
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(old_run)])
    assert exit_.value.code == (f"tgfr evaluate: error: --run: {old_run / 'config.toml'} holds data.manifest = "
                                f"'{relative}', a path relative to the directory the run was trained in, which it "
                                "does not record; name the manifest with --manifest")
    assert not (old_run / "report").exists()

    assert main(["evaluate", "--run", str(old_run), "--manifest", relative]) == 0
    named = re.search(r"; manifest: `([^`]*)`;", (old_run / "report" / "report.md").read_text(encoding="utf-8"))[1]
    assert os.path.isabs(named) and os.path.realpath(named) == os.path.realpath(manifest)


def test_a_manifest_under_a_non_utf8_folder_is_named_escaped_in_the_report(tiny_run, tmp_path, monkeypatch):
    """report.md is UTF-8; the absolute manifest path of a relative --manifest started in a folder whose
    name is not UTF-8 (Python's lone surrogate for the byte) is shown escaped instead of failing the
    report's write after all the work."""
    run, config, manifest = tiny_run
    project = tmp_path / os.fsdecode(b"project\xff")
    project.mkdir()
    (project / "data").symlink_to(manifest.parent)
    monkeypatch.chdir(project)
    report = evaluate(run, config, tmp_path / "report", manifest=f"data/{manifest.name}", device="cpu")
    named = re.search(r"; manifest: `([^`]*)`;", report.read_text(encoding="utf-8"))[1]
    assert named == f"{tmp_path}/project\\udcff/data/{manifest.name}"
