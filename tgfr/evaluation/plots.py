"""Pictures of the report (matplotlib, Agg backend): ROC and CMC curves per split, and
word-region attention heatmaps drawn over faces."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tgfr.metrics import RocCurve  # noqa: E402
from tgfr.output_paths import write_atomically  # noqa: E402

LABELS = {"image_only": "image only (backbone)", "tgfr": "TGFR (face + caption)",
          "text_only": "text only (caption sentence feature)",
          "tgfr_other_captions": "TGFR, another identity's captions"}
# The controls' curves are dashed or dotted, so that the two methods compared stand out.
LINE_STYLES = {"text_only": ":", "tgfr_other_captions": "--"}
# Function words say nothing about a region; the heatmaps show the caption's content words.
FUNCTION_WORDS = frozenset("a an the this that is are has have with and or of on in at to his her he she they "
                           "their its person man woman face".split())
WORDS_PER_CAPTION = 6  # the most words of one caption whose maps a heatmap row shows


def content_word_positions(words: list[str]) -> list[int]:
    """Positions of alphabetic words that are not function words (all positions if none); words: a caption's
    tokens as text (a WordPiece piece that continues a word, "##ing", is not alphabetic)."""
    positions = [t for t, word in enumerate(words) if word.isalpha() and word.lower() not in FUNCTION_WORDS]
    return positions or list(range(len(words)))


def _save(figure: plt.Figure, path: Path, layout: bool = True) -> Path:
    """Writes `figure` as a PNG that replaces `path` whole (a report's picture is never left cut short).
    layout: tighten the layout first (False where the caller laid it out itself)."""
    if layout:
        figure.tight_layout()
    with write_atomically(path, "plot", binary=True) as stream:
        figure.savefig(stream, format="png")
    plt.close(figure)
    return path


def plot_roc(curves: dict[str, RocCurve], path: Path, title: str) -> Path:
    """TAR against FAR on a log axis, one line per method."""
    figure, axis = plt.subplots(figsize=(5, 4), dpi=110)
    for method, curve in curves.items():
        keep = curve.far > 0
        axis.step(curve.far[keep], curve.tar[keep], where="post", label=LABELS.get(method, method),
                  linestyle=LINE_STYLES.get(method, "-"))
    axis.set(xscale="log", xlabel="FAR", ylabel="TAR", title=title, ylim=(0, 1.01))
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    return _save(figure, path)


def plot_cmc(cmcs: dict[str, list[float]], path: Path, title: str) -> Path:
    figure, axis = plt.subplots(figsize=(5, 4), dpi=110)
    for method, cmc in cmcs.items():
        axis.plot(np.arange(1, len(cmc) + 1), cmc, marker="o", markersize=3, label=LABELS.get(method, method),
                  linestyle=LINE_STYLES.get(method, "-"))
    axis.set(xlabel="rank", ylabel="identification rate", title=title, ylim=(0, 1.01))
    # Ranks are whole (no tick at 1.25); with the default min_n_ticks=2 a one-rank CMC, whose view holds the
    # single integer 1, would fall back to fractional ticks.
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right")
    return _save(figure, path)


# An odd number of colours puts the even spread in the middle of the white one, so weights that differ from
# 1/R by rounding alone cannot fall either side of a colour boundary.
ATTENTION_COLOURS = plt.get_cmap("RdBu_r", 255)
# The scale reaches at least this fraction of 1/R either side of it: five times bfloat16's rounding (2^-8), so
# rounding noise never spans the scale, while a 2% lean is still drawn at full colour.
ATTENTION_MIN_REACH = 0.02


def shown_word_positions(attention: torch.Tensor, words: list[list[str]],
                         words_per_caption: int = WORDS_PER_CAPTION) -> list[list[int]]:
    """Per caption, the positions (ascending) of the words whose maps plot_attention shows: its content words
    with the highest peak attention, at most words_per_caption. attention (N, T, R); words: the N captions'
    tokens as text (len <= T)."""
    shown = []
    for i, caption in enumerate(words):
        candidates = content_word_positions(caption)
        peaks = attention[i, candidates].amax(dim=1)
        shown.append(sorted(candidates[k] for k in peaks.argsort(descending=True)[:words_per_caption].tolist()))
    return shown


def attention_spread(attention: torch.Tensor, words: list[list[str]],
                     words_per_caption: int = WORDS_PER_CAPTION) -> dict[str, Any] | None:
    """How far the weights that plot_attention shows (attention (N, T, R), words as it takes them) lie from the
    even spread 1/R, for the report: a trained model's maps may differ from 1/R by a few percent, which the
    colour scale, centred on 1/R and reaching the farthest weight, draws as strongly as a sharp focus.
    {"regions": R, "lowest", "highest": the smallest and largest weight shown, "largest_ratio": the largest,
    over the words shown, of a word's largest weight over its smallest (None where one is 0)}; None when no
    word is shown."""
    shown = shown_word_positions(attention, words, words_per_caption)
    maps = torch.cat([attention[i, chosen].double() for i, chosen in enumerate(shown)])  # (words shown, R)
    if not len(maps):
        return None
    lowest = maps.amin(dim=1)
    return {"regions": attention.shape[2], "lowest": float(lowest.min()), "highest": float(maps.max()),
            "largest_ratio": float((maps.amax(dim=1) / lowest).max()) if (lowest > 0).all() else None}


def attention_colour_norm(maps: list[torch.Tensor], regions: int) -> Normalize:
    """The colour scale of the attention maps shown (each (k, R)): centred on the even spread 1/R, reaching the
    weight farthest from it (at least ATTENTION_MIN_REACH / R away) as far on both sides, so that a weight d above
    1/R is as strongly red as one d below is blue (its lower end may lie below 0, which no weight reaches)."""
    even = 1.0 / regions
    reach = max((float((weights.double() - even).abs().max()) for weights in maps if weights.numel()), default=0.0)
    reach = max(reach, ATTENTION_MIN_REACH * even)
    return Normalize(vmin=even - reach, vmax=even + reach)


def plot_attention(images: torch.Tensor, attention: torch.Tensor, words: list[list[str]], path: Path,
                   words_per_caption: int = WORDS_PER_CAPTION) -> Path:
    """One row per caption: the face, then the attention weights over its regions of each of its most focused
    words.

    images (N, 3, S, S) in [-1, 1]; attention (N, T, R) word-over-region weights (R = G*G);
    words: the N captions' tokens as text (len <= T), which title the maps. Content words with the highest peak
    attention are shown (shown_word_positions).
    Every map is drawn on one colour scale, with a colour bar: scaled map by map, an even spread (each weight
    1/R up to rounding) would show as hot spots. The scale is centred on 1/R (white), red above it and blue
    below, reaching as far either side as the weights shown do, so a trained model's attention that departs
    little from even still shows where it leans.
    """
    n = len(words)
    grid = int(round(attention.shape[2] ** 0.5))
    columns = 1 + words_per_caption
    figure, axes = plt.subplots(n, columns, figsize=(1.6 * columns + 0.8, 1.8 * n), dpi=100, squeeze=False)
    shown = shown_word_positions(attention, words, words_per_caption)
    norm = attention_colour_norm([attention[i, chosen] for i, chosen in enumerate(shown)], attention.shape[2])
    for i, chosen in enumerate(shown):
        face = ((images[i].permute(1, 2, 0).float().cpu().numpy() + 1) / 2).clip(0, 1)
        axes[i, 0].imshow(face)
        axes[i, 0].set_title("face", fontsize=7)
        for column, t in enumerate(chosen, start=1):
            heat = attention[i, t].reshape(grid, grid).float().cpu().numpy()
            axes[i, column].imshow(face)
            overlay = axes[i, column].imshow(heat, cmap=ATTENTION_COLOURS, norm=norm, alpha=0.55,
                                             extent=(0, face.shape[1], face.shape[0], 0), interpolation="bilinear")
            axes[i, column].set_title(words[i][t], fontsize=8)
        for axis in axes[i]:
            axis.axis("off")
    figure.tight_layout(rect=(0, 0, 0.86, 1))  # the right edge is the colour bar's
    if any(shown):
        scale = figure.colorbar(overlay, cax=figure.add_axes((0.88, 0.1, 0.015, 0.8)))
        scale.ax.set_ylim(max(0.0, norm.vmin), norm.vmax)  # no weight lies below 0
        scale.set_label(f"attention weight\n(white: even spread, 1/{attention.shape[2]})", fontsize=7)
        scale.ax.tick_params(labelsize=6)
    return _save(figure, path, layout=False)
