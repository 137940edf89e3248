"""report.md and metrics.json of an evaluation.

metrics.json is keyed split -> method -> figure, e.g.
    {"degraded": {"image_only": {"tar_at_far": {"1e-3": 0.41, ...}, "rank1": 0.52, "auc": ...,
                                 "eer": ..., "*_ci": [low, high], "cmc": [...]},
                  "tgfr": {..., "vs_image_only": {"rank1": 0.08, "rank1_ci": [low, high],
                                                  "tar_at_far": {"1e-3": ...}, "tar_at_far_ci": {...}},
                           "vs_other_captions": {...}, "vs_clean": {...}},
                  "text_only": {...}, "tgfr_other_captions": {...}},
     "clean": {...}}
text_only and tgfr_other_captions are the controls (evaluation.controls; absent without them, and so is
"vs_other_captions"): the caption's sentence feature alone, and TGFR with each image's caption replaced by one of
another identity (tgfr.evaluation.embeddings). "vs_other_captions" is TGFR minus tgfr_other_captions, paired as
"vs_image_only" is (TGFR minus image_only). "vs_clean" (each method of a split of any report name but "clean",
when it is the clean split's degraded copy: the same identities and probe identities) is that split minus clean
on the same bootstrap resamples, as "vs_image_only" is.
An interval is null where some bootstrap resample cannot measure its figure (tgfr.metrics); rank-k and its
interval are null where the gallery holds k identities or fewer (every probe is then within rank k).
"""

import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tgfr.evaluation.plots import LABELS
from tgfr.output_paths import write_atomically

TABLE_FARS = ("1e-4", "1e-3", "1e-2")
MAIN_FAR = "1e-3"  # the summary's (and the paired difference's) operating point
# True whatever the figures: where TGFR gains nothing on image only, the control scoring as TGFR does tells nothing;
# and a fusion blind to the caption's match to the face need not score 0 on it (alike faces have alike captions).
CONTROLS_MEANING = ("TGFR with another identity's captions fuses each face with a caption of another identity, "
                    "the same other identity for all of an identity's images, so TGFR minus it is what the captions' "
                    "match to the face adds. A difference whose interval lies above 0 shows that TGFR uses that "
                    "match; one whose interval reaches 0 or below does not show that it does not, since a fusion "
                    "blind to the match can score below 0 too: a face's own caption repeats what the face shows "
                    "(alike faces have alike captions), another identity's is a cue of its own. Where TGFR gains on "
                    "image only and this difference's interval is not above 0, the gain may come from the captions "
                    "as an identity cue consistent across an identity's images alone. Text only scores the "
                    "caption's sentence feature alone: how far the caption alone identifies a subject.")


def _with_interval(value: float | None, interval: list[float] | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    scale = 100 if percent else 1
    text = f"{value * scale:.1f}" if percent else f"{value:.3f}"
    if interval:
        low, high = interval
        text += f" [{low * scale:.1f}, {high * scale:.1f}]" if percent else f" [{low:.3f}, {high:.3f}]"
    return text


def _table(split: dict[str, dict[str, Any]]) -> list[str]:
    header = ["method", *(f"TAR@FAR={f} %" for f in TABLE_FARS), "AUC", "EER %", "rank-1 %", "rank-5 %"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method, m in split.items():
        cells = [LABELS.get(method, method)]
        cells += [_with_interval(m["tar_at_far"].get(f), m.get("tar_at_far_ci", {}).get(f)) for f in TABLE_FARS]
        cells += [_with_interval(m["auc"], m.get("auc_ci"), percent=False), _with_interval(m["eer"], m.get("eer_ci")),
                  _with_interval(m["rank1"], m.get("rank1_ci")), _with_interval(m["rank5"], m.get("rank5_ci"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _difference(value: float | None, interval: list[float] | None) -> str:
    """A paired difference in percentage points, with its interval."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" + (f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else "")


def _paired_figures(difference: dict[str, Any]) -> str:
    """A paired_difference's TAR at MAIN_FAR and rank-1, in percentage points with their intervals."""
    tar = _difference(difference["tar_at_far"][MAIN_FAR], difference.get("tar_at_far_ci", {}).get(MAIN_FAR))
    return f"TAR@FAR={MAIN_FAR} {tar}, rank-1 {_difference(difference['rank1'], difference.get('rank1_ci'))}"


def _comparison(metrics: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines, controlled = [], False
    for split, methods in metrics.items():
        if {"image_only", "tgfr"} <= set(methods):
            a, b = methods["image_only"], methods["tgfr"]
            # A split too small to resolve the FAR still gets its rank-1 comparison.
            tar_a, tar_b = (_percent(m["tar_at_far"].get(MAIN_FAR)) for m in (a, b))
            lines.append(f"- {split}: TAR@FAR={MAIN_FAR} {tar_a} (image only) -> {tar_b} "
                         f"(TGFR), rank-1 {100 * a['rank1']:.1f}% -> {100 * b['rank1']:.1f}%; TGFR minus image only "
                         f"(paired, points): {_paired_figures(b['vs_image_only'])}.")
        if "vs_other_captions" in methods.get("tgfr", {}):
            controlled = True
            lines.append(f"- {split}: TGFR minus TGFR with another identity's captions (paired, points): "
                         f"{_paired_figures(methods['tgfr']['vs_other_captions'])}.")
    if controlled:
        lines.append(f"- Controls (in each split's table too): {CONTROLS_MEANING}")
    for other in (split for split in metrics if split != "clean"):
        for method, name in (("image_only", "Image only"), ("tgfr", "TGFR")):
            if method not in metrics.get("clean", {}) or method not in metrics[other]:
                continue
            clean, degraded = metrics["clean"][method], metrics[other][method]
            line = (f"- {name}, clean -> {other}: AUC {clean['auc']:.3f} -> "
                    f"{degraded['auc']:.3f}, rank-1 {100 * clean['rank1']:.1f}% -> {100 * degraded['rank1']:.1f}%")
            if "vs_clean" in degraded:
                line += f"; {other} minus clean (paired, points): {_paired_figures(degraded['vs_clean'])}"
            else:
                line += " (not paired: the two splits hold other identities or probe identities)"
            lines.append(line + ".")
    return lines


def _split_lines(content: dict[str, Any], train_split: str) -> list[str]:
    """What a split's images are (their degradations), whether its identities were trained on, and what became of
    its captions (cut to model.max_length, repeated in a control)."""
    recipes = content["degradations"]
    if list(recipes) == ["none"]:
        images = "Images: none records a degradation (clean, or degraded without a `meta.recipe`)."
    elif len(recipes) == 1:
        images = f"Images: all degraded with `{next(iter(recipes))}`."
    else:
        images = "Images: " + ", ".join(f"{count} with `{recipe}`" if recipe != "none" else f"{count} with none"
                                        for recipe, count in recipes.items()) + "."
    shared, total = content["identities_in_training"], content["identities"]
    if shared is None:
        seen = (f"Identities also in the training split: not checked (this manifest's `{train_split}` split is not "
                "known to be the one the run trained on).")
    elif shared:
        seen = (f"**Warning:** {shared} of its {total} identities are in the training split `{train_split}`: these "
                "are not figures of identities unseen in training.")
    else:
        seen = f"Identities also in the training split `{train_split}`: none of {total}."
    lines = [images, seen]
    cuts = content.get("first_captions")
    if cuts and cuts["cut"]:
        lines.append(f"First captions: {cuts['cut']} of its {cuts['distinct']} distinct ones are longer than "
                     f"model.max_length allows and cut (the text encoder sees their first word pieces only), "
                     f"{cuts['distinct_after_cut']} distinct once cut.")
    if content.get("other_captions_repeated"):
        # Repeated within an identity, a caption is an identity cue that the images' own first captions need
        # not give.
        lines.append(f"**Note:** with another identity's captions, {content['other_captions_repeated']} images carry "
                     "a caption that another image of their identity carries where their own first captions differ "
                     "(the next identity's records hold too few distinct captions), which can raise that control's "
                     "figures, and lower TGFR minus it, for a reason other than the captions' match to the face.")
    return lines


def _attention_spread_line(name: str, spread: dict[str, Any]) -> str:
    """How far split `name`'s heatmap weights lie from the even spread (tgfr.evaluation.plots.attention_spread)."""
    regions = spread["regions"]
    line = (f"- {name}: the weights shown lie between {spread['lowest']:.4g} and {spread['highest']:.4g}, against an "
            f"even spread of 1/{regions} = {1 / regions:.4g} ({100 * (spread['lowest'] * regions - 1):+.1f}% to "
            f"{100 * (spread['highest'] * regions - 1):+.1f}% of it); ")
    ratio = spread["largest_ratio"]
    return line + (f"a word's largest weight is at most {ratio:.4g} times its smallest." if ratio is not None else
                   "some word shown gives a region no weight (0).")


def _image(file_name: str) -> str:
    """A Markdown image of a file next to report.md, whatever its name: CommonMark takes the alt text
    literally once every ASCII punctuation mark is escaped, and ends a bare link destination at a
    space, `)` or `<`, so the destination is percent-encoded (renderers decode it to the file)."""
    alt = "".join(f"\\{c}" if c in string.punctuation else c for c in file_name)
    return f"![{alt}]({quote(file_name, safe='')})"


def _produced_by(environment: dict[str, Any]) -> str:
    commit = f" (commit {environment['commit']})" if environment.get("commit") else ""
    device = environment["device"] + (f", {environment['gpu']}" if environment.get("gpu") else "")
    return (f"Produced by tgfr {environment['tgfr']}{commit} with torch {environment['torch']} on {device}, "
            f"{environment['precision']}, {environment['threads']} CPU threads, {environment['date']}.")


def write_report(out: Path, metrics: dict, figures: dict[str, list[str]], heatmaps: list[str],
                 context: dict[str, Any]) -> Path:
    """Writes out/metrics.json and out/report.md, each atomically (an error leaves an earlier report's
    file as it was); `figures` maps split -> plot file names.

    context: run, manifest, synthetic_version (of the embedded synthetic set the manifest is, or None
    for another manifest), training_split_changed (the manifest's training split is not the one the
    run trained on), protocol, gallery_per_subject, resamples, splits (report name -> manifest
    split), training (train_summary.json's content or None), evaluation (every evaluation setting)
    and environment (tgfr.provenance.environment); where known, train_split (its name), split_contents
    (report name -> tgfr.evaluation.run's split contents: degradations, identities and those in training) and
    train_degradation (the run's data.train_degradation as "recipe" and data.train_degrade_p as "p"); with
    heatmaps, attention_spread (report name -> tgfr.evaluation.plots.attention_spread of the maps its heatmap
    shows).
    All but training also go to out/report_info.json.
    """
    per_subject = context["gallery_per_subject"]
    gallery = "first image" if per_subject == 1 else f"first {per_subject} images"
    unmeasured = ("TAR at a FAR below 1/impostor pairs is n/a, and so is rank-k where the gallery holds k identities "
                  "or fewer (every probe is then within rank k)")
    if context["resamples"]:
        intervals = (f"with 95% bootstrap intervals ({context['resamples']} resamples): verification resamples "
                     "subjects, since pairs that share a subject are not independent (a subject drawn c times counts "
                     "its genuine pairs c times, its impostor pairs with a subject drawn c' times c * c' times), "
                     "identification resamples the probes' subjects (a subject drawn c times counts its probes c "
                     "times); every method is scored on the same resamples, so the difference of two has a "
                     f"paired interval. {unmeasured}; an interval is left out where some resample "
                     "cannot measure its figure (e.g. too little impostor weight for the FAR, or no genuine pair where "
                     "one subject has them all) or every resample is the sample itself (a single probe subject).")
    else:
        intervals = f"without intervals (evaluation.bootstrap_resamples = 0: no bootstrap). {unmeasured}."
    data = f" (the embedded synthetic set, generator version {context['synthetic_version']})" \
        if context.get("synthetic_version") is not None else ""
    lines = ["# TGFR evaluation report", "",
             f"Run: `{context['run']}`; manifest: `{context['manifest']}`{data}; protocol: {context['protocol']} "
             f"(verification), the {gallery} (by path, its suffix read as .png, as for a degraded copy) of each "
             f"subject as gallery, the others as probes (identification). Figures in % (AUC as a fraction) "
             f"{intervals}", ""]
    if degradation := context.get("train_degradation"):
        lines += [f"Training degraded each image with `{degradation['recipe']}` with probability {degradation['p']:g} "
                  "(data.train_degradation, data.train_degrade_p)." if degradation["p"] > 0 else
                  "Training degraded no image (data.train_degrade_p = 0).", ""]
    lines += [_produced_by(context["environment"]), ""]
    if context.get("training_split_changed"):
        lines += ["**Warning:** this manifest's training split is not the one the run's last checkpoint trained on "
                  "(its paths, identities, captions or their order changed since): the test splits evaluated may "
                  "not be those the run was trained beside.", ""]
    lines += ["## Summary", "", *_comparison(metrics), ""]
    for split, methods in metrics.items():
        first = next(iter(methods.values()))
        lines += [f"## {split} (split `{context['splits'][split]}`)", "",
                  f"{first['genuine_pairs']} genuine / {first['impostor_pairs']} impostor pairs of "
                  f"{first['subjects']} subjects; "
                  f"{first['probes']} probes against a gallery of {first['gallery']}.", ""]
        if split in context.get("split_contents", {}):
            lines += [" ".join(_split_lines(context["split_contents"][split], context["train_split"])), ""]
        lines += [*_table(methods), ""]
        lines += [_image(name) for name in figures.get(split, [])] + [""]
    if heatmaps:
        lines += ["## Word-region attention", "",
                  "Each row: a test face and, for its caption's content words whose attention peaks highest, each "
                  "word's attention weights over the face's regions (tgfr.ops.word_region_attention). All maps of a "
                  "picture share one colour scale (each picture has its own), centred on the even spread 1/R over "
                  "the R regions (white) and reaching the weight farthest from it, so weights a few percent from 1/R "
                  "are drawn as strongly as a sharp focus would be: read the colour bar's figures, and the spread "
                  "below, before reading strong colour as focus.", ""]
        spreads = [_attention_spread_line(name, spread) for name, spread in context.get("attention_spread", {}).items()
                   if spread is not None]
        if spreads:
            lines += [*spreads, ""]
        lines += [_image(name) for name in heatmaps] + [""]
    if context.get("training"):
        lines += ["## Training", "", "| stage | steps | seconds | s/step | global batch |",
                  "| --- | --- | --- | --- | --- |"]
        for stage, s in context["training"].items():
            # A stage that took no step has no rate (train_summary.json leaves it out); 3 significant digits
            # keep a fast one's rate from reading 0.00.
            rate = f"{s['seconds_per_step']:.3g}" if "seconds_per_step" in s else "n/a"
            lines.append(f"| {stage} | {s['steps_taken']} | {s['seconds']:.0f} | {rate} | {s['global_batch']} |")
        lines.append("")
    # Written once the report's text is made: an error in it leaves an earlier report whole.
    with write_atomically(out / "metrics.json", "metrics file") as stream:
        stream.write(json.dumps(metrics, indent=1) + "\n")
    with write_atomically(out / "report_info.json", "report information") as stream:
        stream.write(json.dumps({key: value for key, value in context.items() if key != "training"}, indent=1) + "\n")
    path = out / "report.md"
    with write_atomically(path, "report") as stream:
        stream.write("\n".join(lines))
    return path
