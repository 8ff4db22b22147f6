"""README.md is rendered from docs/README.in.md and benchmarks/results/, so that every
measured number it quotes is the one a benchmark wrote; and the placeholder mechanism of
docs/render_readme.py does what its docstring says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_renderer() -> ModuleType:
    """docs/render_readme.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "render_readme", ROOT / "docs" / "render_readme.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


renderer = _load_renderer()
RESULTS = {"aq": {"pairs": [{"pair": "0-1", "barrier": 2.8806}], "alphas": 11, "mid": 0.9764}}


def test_readme_matches_template_and_results() -> None:
    diff = renderer.readme_diff()
    assert not diff, f"README.md is stale: run `python docs/render_readme.py`\n{diff}"


def test_template_without_placeholders_renders_unchanged() -> None:
    text = "# Title\n\n$S_a^{1/2}$, a {single} brace, no newline at the end"
    assert renderer.render(text, RESULTS) == text


def test_formats_apply() -> None:
    template = (
        '{{ aq["pairs"][0]["barrier"] :.2f }} | {{ aq["mid"] :.1% }} | {{ aq["alphas"] }}'
        ' | {{ 100 * aq["mid"] :.0f }} | {{ one(aq["pairs"], pair="0-1")["barrier"]:.1f }}\n'
    )
    assert renderer.render(template, RESULTS) == "2.88 | 97.6% | 11 | 98 | 2.9\n"


def test_colons_inside_brackets_and_quotes_stay_in_the_expression() -> None:
    results = {"r": {"a:b": [1, 2, 3]}}
    assert renderer.render('{{ r["a:b"][1:] }} {{ r["a:b"][0] :03d }}', results) == "[2, 3] 001"


def test_let_binds_a_name_and_leaves_no_line() -> None:
    template = 'before\n{{ let pair = lambda p: one(aq["pairs"], pair=p) }}\n{{ pair("0-1")["barrier"] :.1f }}\n'
    assert renderer.render(template, RESULTS) == "before\n2.9\n"


def test_missing_key_names_the_key_the_placeholder_and_the_line() -> None:
    template = 'line one\n{{ aq["pairs"][0]["midpoint"] :.1% }}\n'
    with pytest.raises(renderer.TemplateError) as error:
        renderer.render(template, RESULTS, "README.in.md")
    message = str(error.value)
    assert "README.in.md:2" in message
    assert '{{ aq["pairs"][0]["midpoint"] :.1% }}' in message
    assert "KeyError: 'midpoint'" in message


def test_missing_results_file_names_it() -> None:
    with pytest.raises(renderer.TemplateError, match=r"t:1: .*NameError: name 'lmc_speed'"):
        renderer.render('{{ lmc_speed["ratio"] :.2f }}', RESULTS, "t")


def test_one_rejects_no_match_and_several() -> None:
    rows = {"rows": [{"m": "a"}, {"m": "a"}]}
    with pytest.raises(renderer.TemplateError, match="2 records match"):
        renderer.render('{{ one(rows, m="a") }}', rows)
    with pytest.raises(renderer.TemplateError, match="0 records match"):
        renderer.render('{{ one(rows, m="b") }}', rows)


def test_a_bad_format_names_the_placeholder() -> None:
    with pytest.raises(renderer.TemplateError, match=r't:1: \{\{ aq\["pairs"\] :.2f \}\}'):
        renderer.render('{{ aq["pairs"] :.2f }}', RESULTS, "t")


def test_expressions_see_no_builtins() -> None:
    with pytest.raises(renderer.TemplateError, match="NameError: name 'open'"):
        renderer.render('{{ open("README.md") }}', RESULTS)
