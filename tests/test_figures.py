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


def test_color_for():
    assert figures.color_for("naive") == figures.METHOD_COLORS["naive"]
    assert figures.color_for("Weight matching") == figures.METHOD_COLORS["weight"]
    light = figures.color_for("naive", light=True)
    assert light != figures.color_for("naive")
    light_rgb, base_rgb = mpl.colors.to_rgb(light), mpl.colors.to_rgb(figures.color_for("naive"))
    assert all(lc >= bc for lc, bc in zip(light_rgb, base_rgb, strict=True))  # mixed with white
    assert sum(light_rgb) > sum(base_rgb)
    assert figures.color_for("unknown", 0) != figures.color_for("unknown", 1)
    assert figures.color_for("", 3) == figures.color_for("other", 3)


def test_shared_legend():
    fig, axes = figures.new_figure(columns=2, ncols=2)
    axes[0].plot([0, 1], [0, 1], label="a")
    axes[0].plot([0, 1], [1, 0], label="b")
    figures.shared_legend(fig, axes[0], ncols=2)
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
