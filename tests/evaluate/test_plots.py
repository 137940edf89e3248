"""The report's pictures, read from the matplotlib figure each function hands to _save."""

import pytest

from tgfr.evaluation import plots


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
