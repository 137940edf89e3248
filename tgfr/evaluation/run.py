"""`tgfr evaluate`: image-only vs TGFR embeddings on the clean and degraded test splits of a run, with two
controls (evaluation.controls: text only, TGFR with another identity's captions)."""

import dataclasses
import json
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from tgfr.data import EvalTransform, FaceCaptionDataset, read_manifest
from tgfr.data.dataset import manifest_record_hint
from tgfr.data.image_cache import DEFAULT_IMAGE_CACHE_BYTES, DecodedImageCache
from tgfr.data.manifest import ManifestRecord, records_digest
from tgfr.evaluation.embeddings import embed_split
from tgfr.evaluation.plots import attention_spread, plot_attention, plot_cmc, plot_roc
from tgfr.evaluation.protocols import degradation_difference, split_figures
from tgfr.evaluation.report import write_report
from tgfr.text_formats import parse_json
from tgfr.models import load_tgfr_model
from tgfr.ops import word_region_attention
from tgfr.folder_lock import folder_lock
from tgfr.input_paths import file_problem, refuse_empty_path
from tgfr.output_paths import STAGING, check_output_file, check_output_folder, replace_entries_atomically
from tgfr.provenance import environment
from tgfr.train.batches import resolve_manifest
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.config import EvaluationConfig, TrainConfig, torch_threads
from tgfr.train.run import CHECKPOINT
from tgfr.train.stage_align import align_features

# The figures of each stage in train_summary.json that the report's training table reads (a stage
# that took no step has no seconds_per_step).
SUMMARY_FIGURES = {"steps_taken": (int,), "seconds": (int, float), "global_batch": (int,),
                   "seconds_per_step": (int, float)}
# The report's pictures are <prefix><report name>.png: ROC and CMC curves, attention heatmaps.
PICTURE_PREFIXES = ("roc_", "cmc_", "attention_")
REPORT_FILES = ("metrics.json", "report.md", "report_info.json")


def _attention_maps(model, captions: CaptionFeatures, manifest: Path, split: str, count: int, gamma1: float,
                    word_softmax: bool, device: torch.device, image_cache: DecodedImageCache | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """Faces of `count` subjects of `split`, their captions' word-region attention with the gamma1 and
    word_softmax the align stage trained with (align.gamma1, align.word_softmax) and the captions' words,
    each token as the text it stands for (its tokenizer's convert_tokens_to_string, stripped), for
    plot_attention. image_cache: the split's images that embed_split's dataset decoded, not decoded again."""
    dataset = FaceCaptionDataset(manifest, split=split, transform=EvalTransform(model.config.backbone.input_size),
                                 bad_image_hint=manifest_record_hint(manifest), image_cache=image_cache)
    # One image of `count` different subjects.
    indices = [int((dataset.labels == label).nonzero()[0]) for label in range(min(count, dataset.num_classes))]
    images = torch.stack([dataset[i]["image"] for i in indices]).to(device)
    texts = [dataset.records[i].captions[0] for i in indices]
    with torch.no_grad():
        aligned, _ = align_features(model, images, captions(texts))
        # The attention WRCL trained with: the run's settings, which the op's defaults would override in the picture.
        attention = word_region_attention(aligned.words.float(), aligned.lengths, aligned.regions.float(),
                                          gamma1=gamma1, word_softmax=word_softmax)
    ids = model.tokenize(texts)["input_ids"]
    tokenizer = model.text_encoder.tokenizer
    # Tokens carry their tokenizer's marks (byte-level BPE's "Ġsmall", SentencePiece's "▁the", CLIP's "the</w>"),
    # which would pass function words as content words and title the maps; a WordPiece "##ing" keeps its "##".
    words = [[tokenizer.convert_tokens_to_string([token]).strip()
              for token in tokenizer.convert_ids_to_tokens(ids[i, 1:1 + int(aligned.lengths[i])].tolist())]
             for i in range(len(texts))]
    return images, attention, words


def _remove_stale_files(out: Path, kept: set[str]) -> None:
    """Removes from report folder `out` the pictures an evaluation writes (PICTURE_PREFIXES + report name
    + .png) other than `kept`: an earlier evaluation's, say of a report name no longer in evaluation.splits,
    would otherwise lie beside a report.md that does not show them. Also the temporary files that an
    evaluation killed while writing a report file left (tgfr.output_paths.remove_temporaries), and its
    staging folder. Other files stay."""
    pictures = [entry for entry in out.iterdir() if entry.name.startswith(PICTURE_PREFIXES)
                and entry.name.endswith(".png") and not entry.is_dir()]
    for picture in pictures:
        if picture.name not in kept:
            picture.unlink()
    temporary = re.compile(r"\.((?:" + "|".join(map(re.escape, PICTURE_PREFIXES)) + r").*\.png|"
                           + "|".join(map(re.escape, REPORT_FILES)) + r")\.[a-z0-9_]{8}\.tmp")
    for leftover in out.iterdir():
        if temporary.fullmatch(leftover.name) and leftover.is_file():
            leftover.unlink()
    # The staging folder of an evaluation killed while writing its report (replace_entries_atomically).
    staging = re.compile(re.escape(f".{STAGING}.") + r"[0-9a-f]{8}\.tmp")
    for leftover in out.iterdir():
        if staging.fullmatch(leftover.name) and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)


def _printable(path: Path) -> str:
    """`path` as UTF-8 text for report.md: a byte of a non-UTF-8 folder name (Python's lone surrogate)
    is shown escaped, as \\udcff, where it would make the report unwritable after all the work."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_trained(run: Path, config: TrainConfig) -> None:
    """Both embeddings must come from trained parts: TGFR's from the align heads and the fusion (the
    align and fuse stages), the image-only one from the backbone, which the fr stage trains or
    model.backbone_weights provides (tgfr.train.run.build_model loads the weights whatever the stages)."""
    problems = []
    missing = [stage for stage in ("align", "fuse") if stage not in config.stages]
    if missing:
        problems.append(f"the TGFR embedding needs the align and fuse stages, missing {missing}")
    if "fr" not in config.stages and not config.model.backbone_weights:
        problems.append("the image-only baseline needs the fr stage or model.backbone_weights, and the run has "
                        "neither")
    if problems:
        raise ValueError(f"run {run} trained only the stages {config.stages} (stages in its config.toml): "
                         + "; ".join(problems))


def _read_summary(path: Path) -> dict[str, Any] | None:
    """train_summary.json (None when the run has none), checked for the figures that the report's
    training table reads, so that a corrupt file fails before the evaluation's work, with its name."""
    if not os.path.lexists(path):
        return None
    if problem := file_problem(path):
        raise ValueError(f"training summary {path} {problem}")
    try:
        data = path.read_bytes()
    except OSError as error:  # e.g. a folder in its place
        raise ValueError(f"training summary {path} cannot be read: {error.strerror}") from None
    try:
        summary = parse_json(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"training summary {path} is not valid JSON: {error}") from None
    if not isinstance(summary, dict):
        raise ValueError(f"training summary {path} must be a JSON object (stage -> figures), got "
                         f"{type(summary).__name__}")
    for stage, figures in summary.items():
        if not isinstance(figures, dict):
            raise ValueError(f"training summary {path}: stage {stage!r} must be a JSON object of figures, got "
                             f"{figures!r}")
        for key, kinds in SUMMARY_FIGURES.items():
            if key == "seconds_per_step" and key not in figures:
                continue
            value = figures.get(key)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"training summary {path}: stage {stage!r} needs {key} "
                                 f"({' or '.join(kind.__name__ for kind in kinds)}), got {value!r}")
    return summary


def _trained_split_digest(run: Path) -> str | None:
    """The records_digest of the training split that the run's last checkpoint trained on; None when there
    is nothing to read (no checkpoint, one of an older tgfr, one that cannot be read)."""
    path = run / CHECKPOINT
    if not path.is_file():
        return None
    try:  # mmap: only the digest is read, not the model and optimizer state
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the evaluation does not need the checkpoint; a damaged one is for --resume to name
        return None
    trained = state.get("data") if isinstance(state, dict) else None
    return trained if isinstance(trained, str) else None


def _split_contents(evaluation: EvaluationConfig, records: list[ManifestRecord],
                    trained_identities: set[str] | None) -> dict[str, dict[str, Any]]:
    """Per report name: its manifest split, the degradation recipes of its images with their counts (meta
    "recipe", as `tgfr data degrade` records it: every recipe since the clean image, "celeba+jpeg30" for a celeba
    copy degraded again with jpeg30; "none" for an image without one), its identities, and how many of them the
    training split holds (None where that split is not known)."""
    contents = {}
    for name, split in evaluation.splits.items():
        kept = [record for record in records if record.split == split]
        identities = {record.identity for record in kept}
        recipes = Counter(str(record.meta.get("recipe", "none")) for record in kept)
        contents[name] = {"split": split, "degradations": dict(sorted(recipes.items())), "identities": len(identities),
                          "identities_in_training": None if trained_identities is None
                          else len(identities & trained_identities)}
    return contents


def evaluate(run: str | Path, config: TrainConfig, out: str | Path | None = None, manifest: str | Path | None = None,
             device: str = "auto", image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES) -> Path:
    """Evaluates run/model on config.evaluation.splits; writes report.md, metrics.json and PNGs
    into `out` (default run/report); returns the report path. manifest: evaluate on this manifest
    instead of the run's data (config.data); a relative path, here or in config.data.manifest,
    is relative to the current directory, and report.md names it absolute. device: auto (cuda
    when available), cpu or cuda. image_cache_bytes: decoded images of the split being evaluated kept
    in memory (tgfr.data.image_cache), so that the check of every image, the embeddings and the heatmaps
    decode each once; the figures are the same with any value.

    The run (its stages, train_summary.json) and `out` are checked before any work, and `out` is
    made only once every figure is computed. config.threads > 0 sets torch's CPU threads for the
    call, as training does, so that the figures do not depend on the machine's thread count; the
    caller's count is restored on return.
    """
    DecodedImageCache(image_cache_bytes)  # a bad budget is named before any work
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device (torch.cuda.is_available() "
                         "is False); use device auto or cpu")
    # Checked where the config was built; a script may have changed it since (read_run_config, then
    # config.evaluation.max_rank = 0), which failed only once the first split was embedded, naming no setting.
    config.evaluation.check()
    config.evaluation.check_report_names_fit()
    for name, value in (("run", run), ("out", out), ("manifest", manifest)):
        refuse_empty_path(name, value, f"name the {'report folder' if name == 'out' else name}")
    run = Path(run)
    _check_trained(run, config)
    out = Path(out) if out is not None else run / "report"
    # Made only once every figure is computed: a folder that cannot be made or written fails first.
    check_output_folder("report folder", out, writable=True)
    # A folder where a report file goes (a user's, named like one) would be replaced, with what it holds.
    for name in [*REPORT_FILES, *(f"{prefix}{report}.png" for prefix in PICTURE_PREFIXES
                                  for report in config.evaluation.splits)]:
        check_output_file("report file", out / name)
    training = _read_summary(run / "train_summary.json")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    with torch_threads(config):
        return _evaluate(run, config, out, manifest, device, training, image_cache_bytes)


def _check_evaluated_splits(evaluation: EvaluationConfig, records: list[ManifestRecord], manifest: Path) -> None:
    """Refuses, before any image is embedded, a split of evaluation.splits that the manifest lacks, that
    holds one identity (verification then has no impostor pair), or whose identities all have no more
    images than evaluation.gallery_per_subject (identification then has no probe)."""
    identities: dict[str, Counter[str]] = {}  # split -> images per identity
    for record in records:
        identities.setdefault(record.split, Counter())[record.identity] += 1
    for name, split in evaluation.splits.items():
        found = len(identities.get(split, ()))
        setting = f"evaluation.splits.{name} = {split!r}"
        if not found:
            # `tgfr data degrade` writes the manifest with its copy beside this one unless told to add it here.
            degraded = manifest.with_name(f"{manifest.stem}_{split}.jsonl")
            remedy = (f"; `tgfr data degrade` wrote it into {degraded}: evaluate with --manifest {degraded}"
                      if degraded.is_file() and degraded != manifest else
                      "; evaluate with --manifest FILE, a manifest holding every split evaluated, or set "
                      "evaluation.splits")
            raise ValueError(f"{setting}: manifest {manifest} has no such split (its splits: {sorted(identities)})"
                             f"{remedy}")
        if found == 1:
            raise ValueError(f"{setting}: split {split!r} of manifest {manifest} holds images of one identity; "
                             f"verification needs 2 or more")
        most = max(identities[split].values())
        if most <= evaluation.gallery_per_subject:  # else found after this and every earlier split is embedded
            raise ValueError(f"{setting}: no identity of split {split!r} of manifest {manifest} has more than "
                             f"evaluation.gallery_per_subject = {evaluation.gallery_per_subject} image(s) (the most: "
                             f"{most}), so identification would have no probe image")


def _evaluate(run: Path, config: TrainConfig, out: Path, manifest: str | Path | None, device: torch.device,
              training: dict[str, Any] | None, image_cache_bytes: int) -> Path:
    own_data = manifest is None  # not a manifest given on purpose, which may hold another training split
    # The cache folder's name does not say which synthetic set the report is about.
    synthetic_version = config.data.synthetic_version if own_data and not config.data.manifest else None
    # Absolute, so that the report names the file evaluated whatever directory it is read from.
    manifest = (Path(manifest) if manifest is not None else resolve_manifest(config.data)).absolute()
    records = read_manifest(manifest)
    _check_evaluated_splits(config.evaluation, records, manifest)
    train_split = config.data.train_split
    trained_digest = _trained_split_digest(run)
    train_records = [record for record in records if record.split == train_split]
    # A split gone from the manifest counts as changed too: its images may now be in another split.
    data_changed = own_data and trained_digest is not None and records_digest(train_records) != trained_digest
    if data_changed:
        print(f"tgfr evaluate: warning: the {train_split!r} split of manifest {manifest} is not the one "
              f"the run's last checkpoint trained on (its paths, identities, captions or their order changed since): "
              f"the test splits evaluated may not be those the run was trained beside", file=sys.stderr)
    # The run's own manifest, or one whose training split is the one the checkpoint trained on: its training
    # identities are the run's, and an evaluated split that shares them does not measure unseen identities.
    # A training split changed since is not the run's (an identity trained on may have moved to a test split).
    known = bool(train_records) and not data_changed and (own_data or records_digest(train_records) == trained_digest)
    contents = _split_contents(config.evaluation, records, {r.identity for r in train_records} if known else None)
    for name, content in contents.items():
        if content["identities_in_training"]:
            print(f"tgfr evaluate: warning: evaluation.splits.{name} = {content['split']!r}: "
                  f"{content['identities_in_training']} of its {content['identities']} identities are in the "
                  f"training split {train_split!r} of manifest {manifest}, so its figures are not those of "
                  "identities unseen in training", file=sys.stderr)
    # Nothing trains here: a trainable text encoder's caption features can then be cached too.
    model = load_tgfr_model(run / "model").to(device).requires_grad_(False)
    captions = CaptionFeatures(model.text_encoder, device)
    evaluation = config.evaluation
    scored, metrics, curves, maps = {}, {}, {}, {}
    for name, split in evaluation.splits.items():
        # Its own cache, dropped with the split: checked, embedded and drawn from, each image is decoded once.
        images = DecodedImageCache(image_cache_bytes)
        embeddings = embed_split(model, captions, manifest, split, evaluation.batch_size, device, images,
                                 controls=evaluation.controls)
        scored[name] = split_figures(embeddings, records, split, evaluation)
        contents[name]["other_captions_repeated"] = embeddings.other_captions_repeated
        contents[name]["first_captions"] = cuts = embeddings.first_captions
        if cuts["distinct_after_cut"] < cuts["distinct"]:
            print(f"tgfr evaluate: warning: evaluation.splits.{name} = {split!r}: {cuts['distinct']} distinct first "
                  f"captions are {cuts['distinct_after_cut']} once cut to model.max_length - 2 = "
                  f"{config.model.max_length - 2} word pieces (the text encoder sees no more): the model cannot "
                  "tell the others apart", file=sys.stderr)
        metrics[name], curves[name] = scored[name].figures, scored[name].curves
        if evaluation.heatmap_captions > 0:
            maps[name] = _attention_maps(model, captions, manifest, split, evaluation.heatmap_captions,
                                         config.align.gamma1, config.align.word_softmax, device, images)
    # Every other report name may be a degraded copy of the clean split (`blur = "test_blur"`), not only "degraded".
    for name in scored.keys() - {"clean"} if "clean" in scored else ():
        for method, difference in (degradation_difference(scored["clean"], scored[name]) or {}).items():
            metrics[name][method]["vs_clean"] = difference
    out.mkdir(parents=True, exist_ok=True)  # once every figure is computed: a failure leaves no half report
    # Another evaluation writing into `out` at the same time goes first, whole: interleaved, the folder
    # would hold one's metrics.json beside the other's report.md.
    with folder_lock(out, waiting=f"tgfr evaluate: waiting for another process writing into {out} to end"):
        curve_files = {name: (f"roc_{name}.png", f"cmc_{name}.png") for name in evaluation.splits}
        heatmap_files = {name: f"attention_{name}.png" for name in maps}
        context = {"run": _printable(run.absolute()), "manifest": _printable(manifest),
                   "synthetic_version": synthetic_version,
                   "training_split_changed": data_changed, "train_split": train_split, "split_contents": contents,
                   "train_degradation": {"recipe": config.data.train_degradation, "p": config.data.train_degrade_p},
                   # The maps plot_attention draws below: report.md says how far from even they are.
                   "attention_spread": {name: attention_spread(attention, words)
                                        for name, (_, attention, words) in maps.items()},
                   "protocol": evaluation.protocol,
                   "gallery_per_subject": evaluation.gallery_per_subject,
                   "resamples": evaluation.bootstrap_resamples, "splits": evaluation.splits, "training": training,
                   "evaluation": dataclasses.asdict(evaluation), "environment": environment(device, "fp32")}
        # Staged, then renamed in together, report.md last: a write that fails (a full disk) leaves the earlier
        # report's files as they were, where a picture of the same name put in place at once would sit beside
        # the earlier report.md.
        with replace_entries_atomically(out, "report folder", last=("report.md",)) as staging:
            figures = {name: [plot_roc(curves[name], staging / roc, f"ROC, {name}").name,
                              plot_cmc({m: v["cmc"] for m, v in metrics[name].items()}, staging / cmc,
                                       f"CMC, {name}").name]
                       for name, (roc, cmc) in curve_files.items()}
            heatmaps = [plot_attention(*maps[name], staging / file).name for name, file in heatmap_files.items()]
            write_report(staging, metrics, figures, heatmaps, context)
        # Only now: until the new report.md replaces it, the earlier one shows these pictures.
        _remove_stale_files(out, {*(file for files in figures.values() for file in files), *heatmaps})
        return out / "report.md"
