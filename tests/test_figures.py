"""Paper figures: export formats, embedded TrueType fonts, reproducible bytes, sizes."""

from __future__ import annotations

import matplotlib as mpl
import pytest

from workbench import figures


def _figure(columns: int = 1):
    fig, ax = figures.new_figure(columns=columns)
    with figures.paper_style():
        ax.plot([0, 0.5, 1], [0.1, 2.0, 0.2], label="naive")
        ax.set_xlabel("alpha")
        ax.set_ylabel("loss")
        ax.set_title("Interpolation")
        ax.legend()
    return fig


def test_save_writes_every_format(tmp_path):
    paths = figures.save(_figure(), tmp_path / "nested" / "fig", formats=("pdf", "png", "svg"))
    assert [p.name for p in paths] == ["fig.pdf", "fig.png", "fig.svg"]
    assert all(p.parent == tmp_path / "nested" for p in paths)
    pdf, png, svg = (p.read_bytes() for p in paths)
    assert pdf.startswith(b"%PDF")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"<svg" in svg
    # svg.fonttype = "none": text stays text.
    assert b"Interpolation" in svg


def test_default_formats(tmp_path):
    paths = figures.save(_figure(), tmp_path / "fig")
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    assert all(p.is_file() for p in paths)


def test_pdf_embeds_truetype_fonts(tmp_path):
    [path] = figures.save(_figure(), tmp_path / "fig", formats=("pdf",))
    data = path.read_bytes()
    assert b"/FontFile2" in data
    assert b"/Type3" not in data


def test_pdf_is_byte_identical_across_saves(tmp_path):
    fig = _figure()
    [first] = figures.save(fig, tmp_path / "a", formats=("pdf",))
    [second] = figures.save(fig, tmp_path / "b", formats=("pdf",))
    assert first.read_bytes() == second.read_bytes()
    assert b"/CreationDate" not in first.read_bytes()


def test_png_has_no_software_stamp_and_is_reproducible(tmp_path):
    fig = _figure()
    [first] = figures.save(fig, tmp_path / "a", formats=("png",))
    [second] = figures.save(fig, tmp_path / "b", formats=("png",))
    assert first.read_bytes() == second.read_bytes()
    assert b"matplotlib" not in first.read_bytes().lower()


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unsupported formats \['docx'\]; matplotlib writes \[.*'pdf'"
    ):
        figures.save(_figure(), tmp_path / "fig", formats=("pdf", "docx"))
    assert not (tmp_path / "fig.pdf").exists()  # nothing written before the check


def test_dpi_sets_png_resolution(tmp_path):
    from PIL import Image

    fig = _figure()
    [low] = figures.save(fig, tmp_path / "low", formats=("png",), dpi=100)
    [high] = figures.save(fig, tmp_path / "high", formats=("png",), dpi=200)
    with Image.open(low) as a, Image.open(high) as b:
        assert b.size[0] == pytest.approx(2 * a.size[0], abs=4)


def test_new_figure_widths():
    one, _ = figures.new_figure(columns=1)
    two, _ = figures.new_figure(columns=2, aspect=0.5)
    assert one.get_size_inches()[0] == pytest.approx(3.25)
    assert one.get_size_inches()[1] == pytest.approx(3.25 * 0.68)
    assert two.get_size_inches()[0] == pytest.approx(6.75)
    assert two.get_size_inches()[1] == pytest.approx(6.75 * 0.5)
    assert figures.COLUMN_WIDTH == 3.25 and figures.TEXT_WIDTH == 6.75


def test_new_figure_grid_and_bad_columns():
    _, axes = figures.new_figure(columns=2, nrows=2, ncols=3)
    assert axes.shape == (2, 3)
    with pytest.raises(ValueError, match="columns must be 1 or 2, got 3"):
        figures.new_figure(columns=3)


def test_paper_style_is_scoped():
    before = mpl.rcParams["pdf.fonttype"], mpl.rcParams["font.size"]
    with figures.paper_style():
        assert mpl.rcParams["pdf.fonttype"] == 42
        assert mpl.rcParams["font.size"] == 8
    assert (mpl.rcParams["pdf.fonttype"], mpl.rcParams["font.size"]) == before


def test_paper_style_leaves_interactive_mode_alone():
    """IPython turns interactive mode on at the first figure of a session; the style must
    not turn it off again, or no later figure reaches the notebook (issue 14)."""
    was = mpl.is_interactive()
    try:
        for interactive in (True, False):
            mpl.interactive(interactive)
            figures.new_figure()
            with figures.paper_style():
                mpl.interactive(not interactive)  # switched inside: must survive too
            assert mpl.is_interactive() is (not interactive)
            mpl.interactive(interactive)
            figures.new_figure()
            assert mpl.is_interactive() is interactive
    finally:
        mpl.interactive(was)


def test_color_for():
    assert figures.color_for("naive") == figures.PALETTE["vermillion"]
    assert figures.color_for("none") == figures.PALETTE["vermillion"]  # naive's registry name
    assert figures.color_for("Weight matching") == figures.PALETTE["blue"]
    assert figures.color_for("weight + RESET") == figures.PALETTE["blue"]
    assert figures.color_for("unknown", 0) != figures.color_for("unknown", 1)
    assert figures.color_for("", 3) == figures.color_for("other", 3)


def test_one_naming_scheme():
    assert figures.method_label("none") == "naive"
    assert figures.method_label("weight") == "weight"
    assert figures.series_label("none") == "naive"
    assert figures.series_label("weight", "reset") == "weight + RESET"
    assert figures.series_label("activation", "repair", "test") == "activation + REPAIR (test)"
    assert figures.series_label("cca", "none") == "cca"
    assert figures.model_label(0) == "model 0"
    with pytest.raises(ValueError, match="bn must be"):
        figures.bn_label("Reset")


def test_bn_handling_is_a_line_style_and_methods_have_markers():
    styles = [figures.linestyle_for(bn) for bn in (None, "reset", "repair")]
    assert len(set(styles)) == 3
    markers = [figures.marker_for(m) for m in ("none", "weight", "activation", "cca")]
    assert len(set(markers)) == 4
    assert figures.marker_for("unknown", 0) != figures.marker_for("unknown", 1)


def test_legend_above_keeps_the_data_clear():
    fig, ax = figures.new_figure()
    for k in range(4):
        ax.plot([0, 0.5, 1], [k, k + 2, k], label=f"series {k}")
    figures.legend_above(ax)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y0 >= ax.get_window_extent().y1 - 1  # above the plotting area
    fig_box = fig.get_window_extent()
    assert legend.y1 <= fig_box.y1 + 1  # and inside the figure


def test_legend_above_columns_do_not_overlap_in_the_method_comparison():
    """``plot_comparison`` of five methods and the references (eight entries in two
    columns above a one-column figure): the first column's texts end before the second
    column's handles begin (over the axes' width alone, "activation + RESET" ran into
    them), and the legend stays within the figure."""
    import pandas as pd

    import workbench as wb

    rows = [
        {"method": m, "n_models": n, "bn": "reset", "accuracy": 0.9, "loss": 0.1, "seconds": 1.0}
        for m in ("none", "weight", "c2m3", "activation", "cca")
        for n in (2, 3)
    ]
    rows += [
        {"method": m, "n_models": n, "bn": "-", "accuracy": 0.98, "loss": 0.1, "seconds": 0.0}
        for m in ("endpoints", "ensemble (logits)", "ensemble (probabilities)")
        for n in (2, 3)
    ]
    fig = wb.plot_comparison(pd.DataFrame(rows))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend()
    texts = [t.get_window_extent(renderer) for t in legend.get_texts()]
    handles = [h.get_window_extent(renderer) for h in legend.legend_handles]
    assert len(texts) == 8
    rows_per_column = -(-len(texts) // 2)
    first_ends = max(box.x1 for box in texts[:rows_per_column])
    second_starts = min(box.x0 for box in handles[rows_per_column:])
    assert first_ends < second_starts, (first_ends, second_starts)
    box, page = legend.get_window_extent(renderer), fig.get_window_extent(renderer)
    assert page.x0 <= box.x0 and box.x1 <= page.x1  # within the figure's width


def test_save_table_writes_short_decimals(tmp_path):
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"alpha": np.linspace(0, 1, 11), "loss": [1 / 3] * 11})
    path = figures.save_table(table, tmp_path / "nested" / "t.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "alpha,loss"
    assert lines[4] == "0.3,0.333333333333333"
    assert all("00000000000" not in line for line in lines)


def test_shared_legend():
    fig, axes = figures.new_figure(columns=2, ncols=2)
    axes[0].plot([0, 1], [0, 1], label="a")
    axes[0].plot([0, 1], [1, 0], label="b")
    figures.shared_legend(fig, axes[0], ncols=2)
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]


def test_a_saved_figure_still_draws_its_layout(tmp_path):
    """Saving must not leave the figure so that the notebook's display of it afterwards
    collapses the axes (a constrained_layout warning under the export cell)."""
    import io
    import warnings

    fig, ax = figures.new_figure()
    for k in range(5):
        ax.plot([2, 3], [k, k], label=f"a long series label {k} + RESET")
    figures.legend_above(ax)
    figures.save(fig, tmp_path / "fig", formats=("pdf", "png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.canvas.print_figure(io.BytesIO(), format="png", bbox_inches="tight", dpi=72)
