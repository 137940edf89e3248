"""The report's pictures, read from the matplotlib figure each function hands to _save."""

from matplotlib.cbook import STEP_LOOKUP_MAP
import numpy as np
import pytest

from tgfr.evaluation import plots
from tgfr.metrics import roc_curve, tar_at_far


@pytest.mark.parametrize("max_rank", [1, 2, 3, 5, 20, 100])
def test_the_cmc_rank_axis_has_integer_ticks(max_rank, tmp_path, monkeypatch):
    """Ranks are whole numbers: matplotlib's default ticks put labels at 0.75, 1.25 ... (or 0.94 ... for one rank)."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, layout=True: figures.append(figure))
    cmcs = {"image_only": [min(1.0, 0.3 + 0.01 * k) for k in range(max_rank)],
            "tgfr": [min(1.0, 0.5 + 0.01 * k) for k in range(max_rank)]}
    plots.plot_cmc(cmcs, tmp_path / "cmc_clean.png", "clean")
    (figure,) = figures
    figure.canvas.draw()  # the tick labels are formatted when drawn
    (axis,) = figure.axes
    assert axis.get_xlabel() == "rank"
    low, high = axis.get_xlim()
    labels = axis.xaxis.get_majorticklabels()
    shown = [float(label.get_text().replace("\N{MINUS SIGN}", "-")) for label in labels]
    assert shown and all(value.is_integer() for value in shown), shown
    assert any(low <= value <= high for value in shown)  # at least one tick on the visible axis


def test_the_roc_picture_draws_each_methods_tar_against_far_as_the_figures_read_it(tmp_path, monkeypatch):
    """Between two ROC points the line shows the TAR that tar_at_far gives there, the left point's (a step
    drawn the other way shows the TAR reached only at the higher FAR, a better curve than the figures);
    x is the FAR on a log axis, y the TAR, and the legend names each line's method."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, layout=True: figures.append(figure))
    rng = np.random.default_rng(0)
    curves = {}
    for method, separation in (("image_only", 1.0), ("tgfr", 2.0), ("unlisted", 0.5)):
        same = np.r_[np.ones(20), np.zeros(60)]
        curves[method] = roc_curve(np.round(rng.normal(same * separation, 1.0), 1), same)
    plots.plot_roc(curves, tmp_path / "roc_clean.png", "ROC, clean")
    (figure,) = figures
    (axis,) = figure.axes
    assert (axis.get_xlabel(), axis.get_ylabel(), axis.get_xscale()) == ("FAR", "TAR", "log")
    assert [line.get_label() for line in axis.lines] == [plots.LABELS["image_only"], plots.LABELS["tgfr"], "unlisted"]
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [line.get_label() for line in axis.lines]
    shared_fars = 0
    for line, curve in zip(axis.lines, curves.values()):
        far, tar = line.get_xydata().T
        shown = curve.far > 0  # FAR 0 has no place on a log axis
        np.testing.assert_array_equal(far, curve.far[shown])
        np.testing.assert_array_equal(tar, curve.tar[shown])
        # The polyline matplotlib draws, read at FARs strictly between neighbouring points of distinct FARs
        # (points that add only genuine pairs share a FAR).
        drawn_far, drawn_tar = STEP_LOOKUP_MAP[line.get_drawstyle()](far, tar)
        apart = far[:-1] < far[1:]
        between = np.sqrt(far[:-1] * far[1:])[apart]
        assert between.size > 5
        shared_fars += int((~apart).sum())
        expected = [tar_at_far(curve, f) for f in between]
        np.testing.assert_array_equal(np.interp(between, drawn_far, drawn_tar), expected)
    assert shared_fars  # a vertical step is among those read past


def test_the_cmc_picture_draws_each_methods_rate_against_rank_from_1(tmp_path, monkeypatch):
    """Point k of a line is (rank k, the CMC's k-th rate), k = 1 .. len(cmc): a line drawn from rank 0, or
    reversed, shows rank-1 at another rank. The CMCs rise unevenly and differ, so a shifted or reversed line
    cannot match; the legend names each line's method."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, layout=True: figures.append(figure))
    cmcs = {"image_only": [0.3, 0.45, 0.5, 0.7, 0.72], "tgfr": [0.5, 0.6, 0.8, 0.85, 1.0], "unlisted": [0.1, 0.9]}
    plots.plot_cmc(cmcs, tmp_path / "cmc_clean.png", "CMC, clean")
    (figure,) = figures
    (axis,) = figure.axes
    assert (axis.get_xlabel(), axis.get_ylabel(), axis.get_title()) == ("rank", "identification rate", "CMC, clean")
    assert [line.get_label() for line in axis.lines] == [plots.LABELS["image_only"], plots.LABELS["tgfr"], "unlisted"]
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [line.get_label() for line in axis.lines]
    for line, cmc in zip(axis.lines, cmcs.values(), strict=True):
        rank, rate = line.get_xydata().T
        np.testing.assert_array_equal(rank, np.arange(len(cmc)) + 1)
        np.testing.assert_array_equal(rate, cmc)


def test_the_controls_are_drawn_dashed_or_dotted_beside_the_two_methods_solid_lines(tmp_path, monkeypatch):
    """The ROC and CMC pictures show four curves with the controls: the two methods compared solid, each control
    in a line style of its own (README: text only dotted, TGFR with another identity's captions dashed), labelled
    as plots.LABELS names it."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, layout=True: figures.append(figure))
    methods = ("image_only", "tgfr", "text_only", "tgfr_other_captions")
    same = np.r_[np.ones(20), np.zeros(60)]
    rng = np.random.default_rng(0)
    plots.plot_roc({method: roc_curve(rng.normal(same, 1.0), same) for method in methods}, tmp_path / "roc.png", "ROC")
    plots.plot_cmc({method: [0.5, 0.75, 1.0] for method in methods}, tmp_path / "cmc.png", "CMC")
    for figure in figures:
        (axis,) = figure.axes
        assert [line.get_label() for line in axis.lines] == [plots.LABELS[method] for method in methods]
        styles = [line.get_linestyle() for line in axis.lines]
        assert styles == ["-", "-", ":", "--"]  # README: text only dotted, another identity's captions dashed
    assert len(figures) == 2
