"""`tgfr train` then `tgfr evaluate` through the command line on a shrunk quick preset: the run
folder, report.md, plots and a metrics.json keyed split -> method -> figure."""

import json

import pytest
import safetensors.torch

from tgfr.cli import main
from tgfr.models import load_tgfr_model


def test_train_then_evaluate(tmp_path, tiny_overrides, monkeypatch):
    run = tmp_path / "run"
    overrides = [arg for o in tiny_overrides for arg in ("--set", o)]
    assert main(["train", "--preset", "quick", "--out", str(run), *overrides]) == 0
    for name in ("config.toml", "metrics.jsonl", "train_summary.json", "checkpoints/last.pt", "model/config.json"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"fr", "align", "fuse"}
    assert all(r["samples_per_s"] > 0 for r in log)
    assert {"wrcl", "cicl", "intra", "identity"} <= set(next(r for r in log if r["stage"] == "align"))
    # train_summary.json's last_logged is each stage's last record of metrics.jsonl.
    summary = json.loads((run / "train_summary.json").read_text())
    assert set(summary) == {"fr", "align", "fuse"}
    for stage, figures in summary.items():
        assert figures["last_logged"] == [r for r in log if r["stage"] == stage][-1]
    # The default keeps every decoded training image in memory; reading each from disk every time
    # trains the same weights.
    uncached = tmp_path / "uncached"
    assert main(["train", "--preset", "quick", "--out", str(uncached), "--image-cache-mib", "0", *overrides]) == 0
    weights = safetensors.torch.load_file(run / "model" / "model.safetensors")
    uncached_weights = safetensors.torch.load_file(uncached / "model" / "model.safetensors")
    assert weights.keys() == uncached_weights.keys()
    assert all(weights[name].equal(uncached_weights[name]) for name in weights)
    # The backbone is frozen for good after fr and saved so: a loaded model's BatchNorm statistics stay put.
    assert json.loads((run / "model" / "config.json").read_text())["freeze_backbone"] is True
    assert load_tgfr_model(run / "model").backbone.frozen

    assert main(["evaluate", "--run", str(run)]) == 0
    report = run / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"clean", "degraded"}
    for split in metrics.values():
        assert set(split) == {"image_only", "tgfr", "text_only", "tgfr_other_captions"}  # with the two controls
        assert {"vs_image_only", "vs_other_captions"} <= set(split["tgfr"])
        for figures in split.values():
            assert set(figures["tar_at_far"]) == {"1e-6", "1e-5", "1e-4", "1e-3", "1e-2"}
            # The tiny test split has too few impostor pairs for small FARs: those are None, the rest rates.
            unresolved = {far for far, tar in figures["tar_at_far"].items() if tar is None}
            assert unresolved == set(figures["unresolved_far"])
            assert all(0 <= tar <= 1 for tar in figures["tar_at_far"].values() if tar is not None)
            # A gallery of 5 identities or fewer (one image each) holds every probe within rank 5: not measured.
            if figures["gallery"] <= 5:
                assert figures["rank5"] is None and figures["rank5_ci"] is None
            else:
                assert 0 <= figures["rank1"] <= figures["rank5"] <= 1
            assert 0 <= figures["auc"] <= 1 and 0 <= figures["eer"] <= 1
            low, high = figures["rank1_ci"]
            assert low <= figures["rank1"] <= high
            assert len(figures["cmc"]) == min(5, figures["gallery"])
    # The heatmaps are computed before the report folder is made: when they fail (as on a GPU whose
    # attention op had no CUDA implementation), no half-written report is left.
    import tgfr.evaluation.run as run_module

    def fail(*arguments, **options):
        raise RuntimeError("no attention kernel for this device")

    monkeypatch.setattr(run_module, "word_region_attention", fail)
    with pytest.raises(RuntimeError, match="no attention kernel"):
        main(["evaluate", "--run", str(run), "--out", str(tmp_path / "failed_report")])
    assert not (tmp_path / "failed_report").exists()
    monkeypatch.undo()
    text = (report / "report.md").read_text()
    assert "## degraded" in text and "TAR@FAR=1e-3" in text
    rows = [line for line in text.splitlines() if line.startswith(("| image only", "| TGFR", "| text only"))]
    assert len(rows) == 8 and all(row.endswith("| n/a |") == (metrics["clean"]["tgfr"]["rank5"] is None)
                                  for row in rows)
    for name in ("roc_clean.png", "cmc_degraded.png", "attention_degraded.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in text
