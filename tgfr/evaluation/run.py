"""`tgfr evaluate`: image-only vs TGFR embeddings on the clean and degraded test splits of a run."""

import json
from pathlib import Path

import torch

from tgfr.data import EvalTransform, FaceCaptionDataset, read_manifest
from tgfr.evaluation.embeddings import embed_split
from tgfr.evaluation.plots import plot_attention, plot_cmc, plot_roc
from tgfr.evaluation.protocols import split_figures, verification_scores
from tgfr.evaluation.report import write_report
from tgfr.metrics import roc_curve
from tgfr.models import load_tgfr_model
from tgfr.ops import word_region_attention
from tgfr.train.batches import resolve_manifest
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.config import TrainConfig
from tgfr.train.stage_align import align_features


def _heatmaps(model, captions: CaptionFeatures, manifest: Path, split: str, count: int, device: torch.device,
              path: Path) -> Path:
    dataset = FaceCaptionDataset(manifest, split=split, transform=EvalTransform(model.config.backbone.input_size))
    # One image of `count` different subjects.
    indices = [int((dataset.labels == label).nonzero()[0]) for label in range(min(count, dataset.num_classes))]
    images = torch.stack([dataset[i]["image"] for i in indices]).to(device)
    texts = [dataset.records[i].captions[0] for i in indices]
    with torch.no_grad():
        aligned, _ = align_features(model, images, captions(texts))
        attention = word_region_attention(aligned.words.float(), aligned.lengths, aligned.regions.float())
    ids = model.tokenize(texts)["input_ids"]
    tokens = [model.text_encoder.tokenizer.convert_ids_to_tokens(ids[i, 1:1 + int(aligned.lengths[i])].tolist())
              for i in range(len(texts))]
    return plot_attention(images, attention, tokens, path)


def evaluate(run: str | Path, config: TrainConfig, out: str | Path | None = None, manifest: str | Path | None = None,
             device: str = "auto") -> Path:
    """Evaluates run/model on config.evaluation.splits; writes report.md, metrics.json and PNGs
    into `out` (default run/report); returns the report path. device: auto (cuda when available),
    cpu or cuda."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device (torch.cuda.is_available() "
                         "is False); use device auto or cpu")
    run = Path(run)
    out = Path(out) if out is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    manifest = Path(manifest) if manifest is not None else resolve_manifest(config.data)
    records = read_manifest(manifest)
    model = load_tgfr_model(run / "model").to(device).eval()
    captions = CaptionFeatures(model.text_encoder, device)
    evaluation = config.evaluation
    metrics, figures = {}, {}
    for name, split in evaluation.splits.items():
        embeddings = embed_split(model, captions, manifest, split, evaluation.batch_size, device)
        metrics[name] = split_figures(embeddings, records, split, evaluation)
        curves = {method: roc_curve(*verification_scores(embeddings, method, records, split, evaluation)[:2])
                  for method in metrics[name]}
        figures[name] = [plot_roc(curves, out / f"roc_{name}.png", f"ROC, {name}").name,
                         plot_cmc({m: v["cmc"] for m, v in metrics[name].items()}, out / f"cmc_{name}.png",
                                  f"CMC, {name}").name]
    heatmaps = []
    if evaluation.heatmap_captions > 0:
        for name, split in evaluation.splits.items():
            heatmaps.append(_heatmaps(model, captions, manifest, split, evaluation.heatmap_captions, device,
                                      out / f"attention_{name}.png").name)
    summary = run / "train_summary.json"
    context = {"run": str(run), "manifest": str(manifest), "protocol": evaluation.protocol,
               "gallery_per_subject": evaluation.gallery_per_subject,
               "resamples": evaluation.bootstrap_resamples, "splits": evaluation.splits,
               "training": json.loads(summary.read_text()) if summary.is_file() else None}
    return write_report(out, metrics, figures, heatmaps, context)
