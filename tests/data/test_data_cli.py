from PIL import Image

from tgfr.cli import main
from tgfr.data.manifest import read_manifest


def test_synth_degrade_grid(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--identities", "6", "--images-per-identity", "3",
                 "--seed", "1", "--workers", "1", "--test-fraction", "0.34"]) == 0
    records = read_manifest(out / "manifest.jsonl")
    assert {r.split for r in records} == {"train", "val", "test", "test_degraded"}
    assert len([r for r in records if r.split == "test"]) == 6

    assert main(["data", "degrade", "--manifest", str(out / "manifest.jsonl"), "--split", "val",
                 "--recipe", "down16+jpeg40", "--seed", "2"]) == 0
    degraded = [r for r in read_manifest(out / "manifest_val_degraded.jsonl") if r.split == "val_degraded"]
    assert len(degraded) == 3 and all(r.meta["recipe"] == "down16+jpeg40" for r in degraded)

    png = tmp_path / "grid.png"
    assert main(["data", "grid", "--out", str(png), "--rows", "3"]) == 0
    assert Image.open(png).size == (4 * 112 + 420, 22 + 3 * 112)
    assert main(["data", "grid", "--out", str(png), "--rows", "2", "--manifest", str(out / "manifest.jsonl")]) == 0
    assert Image.open(png).size == (4 * 112 + 420, 22 + 2 * 112)

    assert main(["data", "degrade", "--manifest", str(out / "manifest.jsonl"), "--recipe", "sharpen"]) == 2
    assert "unknown recipe step 'sharpen'" in capsys.readouterr().err
