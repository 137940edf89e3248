"""report.md states the evaluation's real settings."""

import dataclasses
import html
import json
import re
from urllib.parse import unquote

import numpy as np
import pytest
import torch

import tgfr
from tgfr.evaluation.plots import attention_spread
from tgfr.evaluation.protocols import paired_difference
from tgfr.evaluation.report import MAIN_FAR, write_report
from tgfr.metrics import identification_metrics, verification_metrics
from tgfr.provenance import environment
from tgfr.train.config import EvaluationConfig

ENVIRONMENT = environment(torch.device("cpu"), "fp32")


def figures(separation=1.0, subjects=50, resamples=10, genuine_per_subject=1):
    """(figures, replicates) of a method: `subjects` subjects with `genuine_per_subject` genuine pairs each and
    an impostor pair between every two of them (1225 for 50, enough to resolve FAR 1e-3)."""
    rng = np.random.default_rng(0)
    impostor_a, impostor_b = np.triu_indices(subjects, k=1)
    genuine = np.repeat(np.arange(subjects), genuine_per_subject)
    subjects_a, subjects_b = np.r_[genuine, impostor_a], np.r_[genuine, impostor_b]
    same = (subjects_a == subjects_b).astype(np.int64)
    result = verification_metrics(rng.normal(same * separation, 1.0), same, subjects_a=subjects_a,
                                  subjects_b=subjects_b, resamples=resamples, keep_replicates=True)
    labels = np.arange(4)
    probes = np.r_[labels, labels]
    identification = identification_metrics(rng.normal(np.eye(4)[probes] * separation), probes, labels,
                                            resamples=resamples, keep_replicates=True)
    replicates = result.pop("replicates") | identification.pop("replicates")
    return result | identification, replicates


@pytest.mark.parametrize("per_subject, wording", [
    (1, "the first image (by path, its suffix read as .png, as for a degraded copy) of each subject as gallery"),
    (2, "the first 2 images (by path, its suffix read as .png, as for a degraded copy) of each subject as gallery")])
def test_report_states_the_gallery_setting(tmp_path, per_subject, wording):
    metrics = {"clean": {"image_only": figures()[0]}}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": per_subject,
               "resamples": 10, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, metrics, {}, [], context).read_text(encoding="utf-8")
    assert wording in text
    assert ("first image" in text) == (per_subject == 1)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_report_states_the_paired_difference(tmp_path):
    (image_only, image_replicates), (tgfr, tgfr_replicates) = figures(1.0), figures(3.0)
    tgfr["vs_image_only"] = paired_difference(image_only, tgfr, image_replicates, tgfr_replicates)
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": 1,
               "resamples": 10, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, {"clean": {"image_only": image_only, "tgfr": tgfr}}, {}, [], context).read_text()
    difference = tgfr["vs_image_only"]
    tar, (low, high) = difference["tar_at_far"][MAIN_FAR], difference["tar_at_far_ci"][MAIN_FAR]
    assert f"TGFR minus image only (paired, points): TAR@FAR={MAIN_FAR} {100 * tar:+.1f} [{100 * low:+.1f}, " \
           f"{100 * high:+.1f}], rank-1 {100 * difference['rank1']:+.1f} [" in text
    assert "verification resamples subjects" in text and "50 subjects" in text
    # The summary line credits each method with its own figures (the two TARs and rank-1s differ).
    assert image_only["tar_at_far"][MAIN_FAR] != tgfr["tar_at_far"][MAIN_FAR]
    assert (f"- clean: TAR@FAR={MAIN_FAR} {100 * image_only['tar_at_far'][MAIN_FAR]:.1f}% (image only) -> "
            f"{100 * tgfr['tar_at_far'][MAIN_FAR]:.1f}% (TGFR), rank-1 {100 * image_only['rank1']:.1f}% -> "
            f"{100 * tgfr['rank1']:.1f}%") in text


def test_summary_keeps_the_rank1_comparison_when_the_far_is_unresolved(tmp_path):
    """20 subjects give 190 impostor pairs: TAR at FAR 1e-3 cannot be measured, rank-1 can."""
    (image_only, image_replicates), (tgfr, tgfr_replicates) = figures(1.0, subjects=20), figures(3.0, subjects=20)
    assert image_only["tar_at_far"][MAIN_FAR] is None
    tgfr["vs_image_only"] = paired_difference(image_only, tgfr, image_replicates, tgfr_replicates)
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": 1,
               "resamples": 10, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, {"clean": {"image_only": image_only, "tgfr": tgfr}}, {}, [], context).read_text()
    difference = tgfr["vs_image_only"]
    assert (f"- clean: TAR@FAR={MAIN_FAR} n/a (image only) -> n/a (TGFR), rank-1 {100 * image_only['rank1']:.1f}% -> "
            f"{100 * tgfr['rank1']:.1f}%") in text
    assert f"TAR@FAR={MAIN_FAR} n/a, rank-1 {100 * difference['rank1']:+.1f} [" in text


@pytest.mark.parametrize("resamples", [0, 10])
def test_report_states_whether_there_are_intervals(tmp_path, resamples):
    image_only = figures(resamples=resamples)[0]
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": 1,
               "resamples": resamples, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, {"clean": {"image_only": image_only}}, {}, [], context).read_text()
    auc = f"{image_only['auc']:.3f}"
    if resamples:
        assert "with 95% bootstrap intervals (10 resamples)" in text
        # A split with one probe subject has its identification intervals left out for this reason, not the FAR's.
        assert "or every resample is the sample itself (a single probe subject)." in text
        low, high = image_only["auc_ci"]
        assert f"{auc} [{low:.3f}, {high:.3f}]" in text
    else:
        assert "95%" not in text and "(0 resamples)" not in text
        assert "without intervals (evaluation.bootstrap_resamples = 0: no bootstrap)" in text
        assert f"| {auc} |" in text  # the figure alone


# Report names that name files but mean something to Markdown: a space, `)` or `<` ends a bare link
# destination; `[`, `]`, `*`, `_`, a backtick or `&` would change the alt text; a tab is allowed too.
NAMES = ["clean set", "a)b", "x<y>", "b]r[", "*star* _x_", "&amp;", "`tick`", "é ü", "(p)", "tab\tkey"]


def report_with_images(folder):
    """report.md of one split per name in NAMES, with its PNGs next to it: {file name: report text}."""
    config = EvaluationConfig(splits={name: "test" for name in NAMES})  # the names are allowed
    files = {name: [f"{kind}_{name}.png" for kind in ("roc", "cmc")] for name in config.splits}
    heatmaps = [f"attention_{name}.png" for name in config.splits]
    for name in [*sum(files.values(), []), *heatmaps]:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": 1,
               "resamples": 0, "splits": config.splits, "training": None}
    metrics = {name: {"image_only": figures(resamples=0)[0]} for name in config.splits}
    text = write_report(folder, metrics, files, heatmaps, context).read_text(encoding="utf-8")
    return {*sum(files.values(), []), *heatmaps}, text


def test_images_link_to_their_files_whatever_the_report_name(tmp_path):
    expected, text = report_with_images(tmp_path)
    # CommonMark's bare link destination: no space, control character or '<', and no ')' (parentheses
    # only balanced or escaped); the alt text is link text, where every ASCII punctuation may be escaped.
    images = re.findall(r"!\[((?:\\[!-/:-@\[-`{-~]|[^\\\[\]])*)\]\(([^\s<()\x00-\x1f]+)\)", text)
    assert len(images) == len(expected) == text.count("![")
    for alt, destination in images:
        name = unquote(destination)
        assert (tmp_path / name).is_file() and (tmp_path / name).read_bytes().startswith(b"\x89PNG")
        assert re.sub(r"\\(.)", r"\1", alt) == name
    assert {unquote(destination) for _, destination in images} == expected


def test_images_render_whatever_the_report_name(tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    expected, text = report_with_images(tmp_path)
    rendered = markdown_it.MarkdownIt("commonmark").render(text)
    images = re.findall(r'<img src="([^"]*)" alt="([^"]*)" />', rendered)
    assert {unquote(html.unescape(src)) for src, _ in images} == expected
    assert all(html.unescape(alt) == unquote(html.unescape(src)) for src, alt in images)


def test_table_row_puts_each_figure_and_its_interval_in_its_column(tmp_path):
    """Distinct values for every figure and interval bound, so a figure shown under another's
    column or with its bounds swapped changes the row."""
    figures = {"tar_at_far": {"1e-4": None, "1e-3": 0.25, "1e-2": 0.5},
               "tar_at_far_ci": {"1e-4": None, "1e-3": [0.2, 0.3], "1e-2": [0.45, 0.55]},
               "auc": 0.912, "auc_ci": [0.901, 0.923], "eer": 0.07, "eer_ci": [0.06, 0.08],
               "rank1": 0.6, "rank1_ci": [0.55, 0.65], "rank5": 0.8, "rank5_ci": [0.75, 0.85], "cmc": [0.6, 0.8],
               "genuine_pairs": 10, "impostor_pairs": 900, "subjects": 10, "probes": 20, "gallery": 10}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": 1,
               "resamples": 10, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, {"clean": {"image_only": figures}}, {}, [], context).read_text()
    assert ("| method | TAR@FAR=1e-4 % | TAR@FAR=1e-3 % | TAR@FAR=1e-2 % | AUC | EER % | rank-1 % | rank-5 % |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
            "| image only (backbone) | n/a | 25.0 [20.0, 30.0] | 50.0 [45.0, 55.0] | 0.912 [0.901, 0.923] | "
            "7.0 [6.0, 8.0] | 60.0 [55.0, 65.0] | 80.0 [75.0, 85.0] |\n") in text


@pytest.mark.parametrize("resamples", [0, 10])
def test_a_rank_that_the_gallery_cannot_miss_is_not_reported_as_measured(tmp_path, resamples):
    """figures() has a gallery of 4 identities: every probe is within rank 5 by construction, so rank-5 is
    n/a in report.md and null in metrics.json, with its interval, where it read 100.0 [100.0, 100.0]."""
    image_only = figures(resamples=resamples)[0]
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": resamples, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, {"clean": {"image_only": image_only}}, {}, [], context).read_text()
    rank1 = f"{100 * image_only['rank1']:.1f}"
    (row,) = [line for line in text.splitlines() if line.startswith("| image only")]
    assert re.search(rf"\| {rank1}( \[[^]]*\])? \| n/a \|$", row), row
    assert "rank-k where the gallery holds k identities or fewer (every probe is then within rank k)" in text
    saved = json.loads((tmp_path / "metrics.json").read_text())["clean"]["image_only"]
    assert saved["rank5"] is None and saved.get("rank5_ci") is None and saved["rank1"] == image_only["rank1"]


def test_report_names_what_produced_it_and_report_info_holds_every_setting(tmp_path):
    """report.md says which tgfr (and commit), torch, device, precision and threads made it;
    report_info.json holds that and the settings, so that the report can be traced and rerun."""
    described = {**ENVIRONMENT, "commit": "0123456789ab", "threads": 3, "torch": "9.9"}
    settings = dataclasses.asdict(EvaluationConfig())
    context = {"run": "run", "environment": described, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test"}, "training": None,
               "evaluation": settings}
    text = write_report(tmp_path, {"clean": {"image_only": figures()[0]}}, {}, [], context).read_text()
    assert (f"Produced by tgfr {tgfr.__version__} (commit 0123456789ab) with torch 9.9 on cpu, fp32, 3 CPU threads, "
            f"{described['date']}.") in text
    info = json.loads((tmp_path / "report_info.json").read_text())
    assert info == {key: value for key, value in context.items() if key != "training"}
    on_gpu = {**context, "environment": {**described, "device": "cuda", "gpu": "NVIDIA H200"}}
    text = write_report(tmp_path / "gpu", {"clean": {"image_only": figures()[0]}}, {}, [], on_gpu).read_text()
    assert " with torch 9.9 on cuda, NVIDIA H200, fp32, 3 CPU threads, " in text


def test_report_lines_put_each_figure_where_it_says(tmp_path):
    """A review's mutations swapped clean and degraded, pair and probe counts, and the training table's columns,
    and every test passed: here every number differs, so each line has one right reading."""
    clean, degraded = figures(3.0)[0], figures(1.0, subjects=40, genuine_per_subject=2)[0]
    metrics = {"clean": {"image_only": clean}, "degraded": {"image_only": degraded}}
    training = {"fr": {"steps_taken": 400, "seconds": 95.0, "global_batch": 64, "seconds_per_step": 0.2375},
                "align": {"steps_taken": 0, "seconds": 3.0, "global_batch": 32}}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test_x", "degraded": "test_y"},
               "training": training}
    text = write_report(tmp_path, metrics, {}, [], context).read_text()
    assert (f"- Image only, clean -> degraded: AUC {clean['auc']:.3f} -> {degraded['auc']:.3f}, rank-1 "
            f"{100 * clean['rank1']:.1f}% -> {100 * degraded['rank1']:.1f}% (not paired: the two splits hold other "
            "identities or probe identities).") in text
    assert clean["auc"] != degraded["auc"]
    # The degraded copy of the clean split: degraded minus clean on the same resamples.
    degraded["vs_clean"] = {"rank1": -0.125, "rank1_ci": [-0.25, -0.0625], "tar_at_far": {MAIN_FAR: -0.5},
                            "tar_at_far_ci": {MAIN_FAR: [-0.75, -0.25]}}
    text = write_report(tmp_path, metrics, {}, [], context).read_text()
    assert (f"- Image only, clean -> degraded: AUC {clean['auc']:.3f} -> {degraded['auc']:.3f}, rank-1 "
            f"{100 * clean['rank1']:.1f}% -> {100 * degraded['rank1']:.1f}%; degraded minus clean (paired, points): "
            f"TAR@FAR={MAIN_FAR} -50.0 [-75.0, -25.0], rank-1 -12.5 [-25.0, -6.2].") in text
    assert "## clean (split `test_x`)" in text and "## degraded (split `test_y`)" in text
    # Any report name but clean may be its degraded copy (README: `{clean = "test", blur = "test_blur"}`).
    renamed = {"clean": metrics["clean"], "blur": metrics["degraded"]}
    text = write_report(tmp_path, renamed, {}, [], {**context, "splits": {"clean": "test_x", "blur": "test_y"}}
                        ).read_text()
    assert (f"- Image only, clean -> blur: AUC {clean['auc']:.3f} -> {degraded['auc']:.3f}, rank-1 "
            f"{100 * clean['rank1']:.1f}% -> {100 * degraded['rank1']:.1f}%; blur minus clean (paired, points): "
            f"TAR@FAR={MAIN_FAR} -50.0 [-75.0, -25.0], rank-1 -12.5 [-25.0, -6.2].") in text
    assert (f"{degraded['genuine_pairs']} genuine / {degraded['impostor_pairs']} impostor pairs of "
            f"{degraded['subjects']} subjects; {degraded['probes']} probes against a gallery of "
            f"{degraded['gallery']}.") in text
    counts = [degraded[key] for key in ("genuine_pairs", "impostor_pairs", "subjects", "probes", "gallery")]
    assert len(set(counts)) == len(counts), counts
    # A stage that took no step has no rate: "n/a", not a 0.00 s step.
    assert "| fr | 400 | 95 | 0.237 | 64 |" in text and "| align | 0 | 3 | n/a | 32 |" in text


@pytest.mark.parametrize("degradations, line", [
    ({"none": 5}, "Images: none records a degradation (clean, or degraded without a `meta.recipe`)."),
    ({"down16": 5}, "Images: all degraded with `down16`."),
    ({"down16": 3, "none": 2}, "Images: 3 with `down16`, 2 with none."),
    ({"celeba": 1, "down16": 4}, "Images: 1 with `celeba`, 4 with `down16`."),
])
def test_each_split_says_which_degradations_its_images_have(tmp_path, degradations, line):
    contents = {"split": "test_x", "degradations": degradations, "identities": 50, "identities_in_training": 0}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test_x"}, "training": None,
               "train_split": "train", "split_contents": {"clean": contents}}
    text = write_report(tmp_path, {"clean": {"image_only": figures()[0]}}, {}, [], context).read_text()
    assert f"{line} Identities also in the training split `train`: none of 50." in text


@pytest.mark.parametrize("repeated", [None, 0, 7])
def test_a_split_whose_control_repeats_captions_within_an_identity_says_so(tmp_path, repeated):
    """Images of an identity that share a control caption make the control score higher for that alone: said
    where it happens, and nothing said where no caption repeats or the controls did not run."""
    contents = {"split": "test_x", "degradations": {"none": 5}, "identities": 50, "identities_in_training": 0,
                "other_captions_repeated": repeated}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test_x"}, "training": None,
               "train_split": "train", "split_contents": {"clean": contents}}
    text = write_report(tmp_path, {"clean": {"image_only": figures()[0]}}, {}, [], context).read_text()
    note = (f"**Note:** with another identity's captions, {repeated} images carry a caption that another image of "
            "their identity carries where their own first captions differ")
    assert (note in text, "**Note:**" in text) == (bool(repeated), bool(repeated))


@pytest.mark.parametrize("cut, line", [(0, None), (3, "First captions: 3 of its 7 distinct ones are longer than "
                                                      "model.max_length allows and cut (the text encoder sees their "
                                                      "first word pieces only), 5 distinct once cut.")])
def test_a_split_says_how_many_first_captions_were_cut_where_any_were(tmp_path, cut, line):
    contents = {"split": "test_x", "degradations": {"none": 7}, "identities": 3, "identities_in_training": 0,
                "first_captions": {"distinct": 7, "cut": cut, "distinct_after_cut": 7 if cut == 0 else 5}}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test_x"}, "training": None,
               "train_split": "train", "split_contents": {"clean": contents}}
    text = write_report(tmp_path, {"clean": {"image_only": figures()[0]}}, {}, [], context).read_text()
    assert ("First captions:" in text) == (line is not None) and (line is None or line in text)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_the_report_says_how_training_degraded_its_images(tmp_path, p):
    """data.train_degrade_p = 0 degrades nothing: the report says so instead of "with probability 0"."""
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test"}, "training": None,
               "train_degradation": {"recipe": "down16+celeba", "p": p}}
    text = write_report(tmp_path, {"clean": {"image_only": figures()[0]}}, {}, [], context).read_text()
    degraded = (f"Training degraded each image with `down16+celeba` with probability {p:g} "
                "(data.train_degradation, data.train_degrade_p).")
    undegraded = "Training degraded no image (data.train_degrade_p = 0)."
    assert (degraded in text, undegraded in text) == (p > 0, p == 0)


def test_the_report_says_how_far_the_heatmaps_weights_lie_from_the_even_spread(tmp_path):
    """A trained model's maps lay within a few % of 1/R, drawn at full colour on a scale reaching the farthest
    weight, while report.md spoke of the regions words "attend to": it now gives the spread of the weights shown,
    and report_info.json holds it. Shown are the content words with the highest peaks: here the function words
    "a", "man" and "and", and "cheeks", the 7th content word, with the lowest peak, are not, and each would change
    a figure."""
    regions = 16

    def leaning(weight, region=0):
        """A map putting `weight` on `region` and the rest evenly on the others."""
        weights = torch.full((regions,), (1 - weight) / (regions - 1), dtype=torch.float64)
        weights[region] = weight
        return weights

    clean_tokens = ["a", "man", "with", "green", "eyes"]
    degraded_tokens = ["round", "green", "eyes", "thin", "red", "lips", "and", "cheeks"]
    attention = torch.zeros(2, len(degraded_tokens) + 1, regions, dtype=torch.float64)  # a padded word too
    attention[0, :len(clean_tokens)] = torch.stack([leaning(0.9), leaning(0.3), leaning(0.4), leaning(0.25),
                                                    leaning(0.2)])
    attention[1, :len(degraded_tokens)] = torch.stack([leaning(0.3), leaning(0.35), leaning(0.4), leaning(0.45),
                                                       leaning(0.5), leaning(0.55), leaning(0.6, region=2),
                                                       leaning(0.001, region=1)])
    attention[1, 6, 3] = 0.0  # a zero weight shown would leave no ratio
    shown = {"clean": attention[0, [3, 4]], "degraded": attention[1, :6]}
    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test", "degraded": "test_degraded"},
               "training": None}
    context["attention_spread"] = {"clean": attention_spread(attention[:1], [clean_tokens]),
                                   "degraded": attention_spread(attention[1:], [degraded_tokens])}
    metrics = {"clean": {"image_only": figures()[0]}, "degraded": {"image_only": figures()[0]}}
    text = write_report(tmp_path, metrics, {}, ["attention_clean.png", "attention_degraded.png"], context).read_text()
    assert "read the colour bar's figures, and the spread below, before reading strong colour as focus." in text
    for name, maps in shown.items():
        lowest, highest = maps.min().item(), maps.max().item()
        ratio = (maps.max(dim=1).values / maps.min(dim=1).values).max().item()
        assert context["attention_spread"][name] == pytest.approx(
            {"regions": regions, "lowest": lowest, "highest": highest, "largest_ratio": ratio}, rel=1e-12)
        assert (f"- {name}: the weights shown lie between {lowest:.4g} and {highest:.4g}, against an even spread of "
                f"1/16 = 0.0625 ({100 * (16 * lowest - 1):+.1f}% to {100 * (16 * highest - 1):+.1f}% of it); a word's "
                f"largest weight is at most {ratio:.4g} times its smallest.") in text
    info = json.loads((tmp_path / "report_info.json").read_text())
    assert info["attention_spread"] == context["attention_spread"]

    attention[0, 3, 5] = 0.0  # "green", shown: a word's largest weight over its smallest is unbounded
    context["attention_spread"]["clean"] = attention_spread(attention[:1], [clean_tokens])
    text = write_report(tmp_path, metrics, {}, ["attention_clean.png"], context).read_text()
    assert context["attention_spread"]["clean"]["largest_ratio"] is None
    assert (f"- clean: the weights shown lie between 0 and {shown['clean'].max().item():.4g}, against an even spread "
            "of 1/16 = 0.0625 (-100.0% to +300.0% of it); some word shown gives a region no weight (0).") in text


def test_the_controls_have_table_rows_a_summary_line_per_split_and_one_sentence_that_says_what_they_mean(tmp_path):
    """Each split's table has a row per control, under its plots.LABELS label, with its own figures; the summary
    gives, per split, TGFR minus TGFR with another identity's captions (paired) and says once what the controls
    mean; metrics.json keeps the controls and "vs_other_captions". A report without the controls (an older one,
    or evaluation.controls = false) says nothing of them."""
    from tgfr.evaluation.plots import LABELS

    context = {"run": "run", "environment": ENVIRONMENT, "manifest": "m.jsonl", "protocol": "all_pairs",
               "gallery_per_subject": 1, "resamples": 10, "splits": {"clean": "test", "degraded": "test_degraded"},
               "training": None}
    metrics = {}
    for split, shift in (("clean", 1.0), ("degraded", 0.5)):
        (image_only, image_replicates), (tgfr, tgfr_replicates) = figures(shift), figures(shift + 2)
        (text_only, _), (other, other_replicates) = figures(shift + 0.5), figures(shift + 1.5)
        tgfr["vs_image_only"] = paired_difference(image_only, tgfr, image_replicates, tgfr_replicates)
        tgfr["vs_other_captions"] = paired_difference(other, tgfr, other_replicates, tgfr_replicates)
        metrics[split] = {"image_only": image_only, "tgfr": tgfr, "text_only": text_only,
                          "tgfr_other_captions": other}
    text = write_report(tmp_path, metrics, {}, [], context).read_text(encoding="utf-8")
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    lines = text.splitlines()
    for split, methods in metrics.items():
        difference = methods["tgfr"]["vs_other_captions"]
        tar, (low, high) = difference["tar_at_far"][MAIN_FAR], difference["tar_at_far_ci"][MAIN_FAR]
        rank1, (rank1_low, rank1_high) = difference["rank1"], difference["rank1_ci"]
        assert (f"- {split}: TGFR minus TGFR with another identity's captions (paired, points): TAR@FAR={MAIN_FAR} "
                f"{100 * tar:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], rank-1 {100 * rank1:+.1f} "
                f"[{100 * rank1_low:+.1f}, {100 * rank1_high:+.1f}].") in lines
        table = lines[lines.index(f"## {split} (split `{context['splits'][split]}`)"):]
        for method in ("text_only", "tgfr_other_captions"):
            (row,) = [line for line in table[:12] if line.startswith(f"| {LABELS[method]} | ")]
            low, high = methods[method]["auc_ci"]
            assert row.split(" | ")[4] == f"{methods[method]['auc']:.3f} [{low:.3f}, {high:.3f}]"
    assert len({f"{metrics['clean'][method]['auc']:.3f}" for method in metrics["clean"]}) == 4  # no row fits another
    # Said as a condition on both differences: where TGFR gains nothing on image only, the control scoring as TGFR
    # does (both differences 0) says nothing of the captions, and the sentence read as if they helped.
    # A fusion blind to the caption's match to the face scores below 0 on this control where alike faces have
    # alike captions: "about 0" is no proof that the match goes unused, and the report must not say it is.
    assert "not from what they say of the face" not in text
    # A point estimate above 0 with an interval reaching below it (+11.0 [-4.0, +27.0]) is no evidence either way.
    assert text.count("A difference whose interval lies above 0 shows that TGFR uses that match; one whose interval "
                      "reaches 0 or below does not show that it does not") == 1
    assert text.count("Where TGFR gains on image only and this difference's interval is not above 0, the gain may "
                      "come from the captions as an identity cue") == 1
    assert text.count("how far the caption alone identifies a subject") == 1

    for methods in metrics.values():
        del methods["text_only"], methods["tgfr_other_captions"], methods["tgfr"]["vs_other_captions"]
    text = write_report(tmp_path, metrics, {}, [], context).read_text(encoding="utf-8")
    assert "another identity" not in text and "caption alone" not in text
    assert LABELS["text_only"] not in text and "TGFR minus image only (paired, points)" in text
