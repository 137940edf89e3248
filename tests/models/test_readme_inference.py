"""README's "Using a trained model" snippet, run as written against a small saved model, gives the
embeddings of `tgfr evaluate`'s path (tgfr.evaluation.embeddings.embed_split)."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tgfr.data.manifest import ManifestRecord, write_manifest
from tgfr.evaluation.embeddings import embed_split
from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel, save_tgfr_model
from tgfr.train.caption_features import CaptionFeatures

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippet() -> str:
    """The first Python block of README's "Using a trained model" section."""
    section = README.read_text(encoding="utf-8").split("\n## Using a trained model\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_inference_snippet_gives_the_evaluation_embeddings(tiny_bert_dir, tmp_path, monkeypatch):
    torch.manual_seed(0)
    backbone = IResNetConfig.preset("iresnet_small", input_size=32, num_features=64)
    model = TGFRModel(TGFRConfig(backbone=backbone, text_encoder=str(tiny_bert_dir), max_length=10, dim=16,
                                 fine_dim=8, freeze_text_encoder=True))
    with torch.no_grad():  # running statistics of the image head away from BatchNorm's initial (0, 1)
        model.train().align(torch.randn(8, 3, 32, 32), **model.tokenize(["a man with a beard"] * 8))
    save_tgfr_model(model, tmp_path / "runs/default/model")
    rng = np.random.default_rng(0)
    for name in ("face_a.jpg", "face_b.jpg"):  # another size than the model's 32: the transform resizes
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)

    monkeypatch.chdir(tmp_path)
    snippet = {}
    exec(compile(readme_snippet(), str(README), "exec"), snippet)

    loaded = snippet["model"]
    assert loaded.text_encoder.frozen  # tgfr evaluate then serves float16 caption features from its cache
    records = [ManifestRecord(path, str(i), "test", (caption,))
               for i, (path, caption) in enumerate(zip(("face_a.jpg", "face_b.jpg"), snippet["captions"]))]
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    expected = embed_split(loaded, CaptionFeatures(loaded.text_encoder, torch.device("cpu")), manifest, "test",
                           batch_size=2, device=torch.device("cpu"))
    # Unit rows, so that the protocols' plain dot products are cosines.
    for embeddings in (expected.image_only, expected.tgfr):
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    torch.testing.assert_close(snippet["face_only"], torch.from_numpy(expected.image_only))
    # The cache rounds the text encoder's features to float16 (relative 2**-11, about 5e-4); through the
    # text head and the fusion that moves these unit embeddings by about 1e-4 (measured), within 1e-3.
    torch.testing.assert_close(snippet["fused"], torch.from_numpy(expected.tgfr), rtol=0.0, atol=1e-3)
    scores = expected.tgfr[0] @ expected.tgfr[1], expected.image_only[0] @ expected.image_only[1]
    assert abs(snippet["tgfr_score"] - scores[0]) < 2e-3 and abs(snippet["image_only_score"] - scores[1]) < 1e-5
