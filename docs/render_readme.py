"""Render README.md from docs/README.in.md and the JSON files in benchmarks/results/.

Every number in the README that a benchmark measured is written in the template as a
placeholder evaluated from the results that the scripts in ``benchmarks/`` wrote, so the
README cannot drift from them: rerun a benchmark, render, and the README follows (a test
fails until it does).

    python docs/render_readme.py          # write README.md
    python docs/render_readme.py --check  # exit 1 with a unified diff if README.md is stale

Template syntax (everything else is copied as is):

``{{ EXPRESSION }}`` or ``{{ EXPRESSION :SPEC }}``
    Replaced by ``format(value, SPEC)`` (``.2f``, ``.1%``, ...; no SPEC: ``str(value)``).
    SPEC follows the last colon outside brackets and quotes, so ``x[1:3]`` and ``d["a:b"]``
    stay in the expression (a lambda needs parentheses). A placeholder is on one line and
    holds no ``}}``.
``{{ let NAME = EXPRESSION }}`` on a line of its own
    Binds NAME for the rest of the template; the line is left out of the output.

Expressions are Python, evaluated with no builtins. They see each
``benchmarks/results/<name>.json`` as a variable ``<name>`` (the parsed JSON: dicts, lists,
numbers, strings, read with subscripts, ``alignment_quality["summary"]["none+reset"]``),
the names bound by ``let``, and the helpers in ``HELPERS``: ``one(records, **fields)`` (the
single record of a list whose fields equal the keywords), ``min``, ``max`` and ``abs``.
A placeholder that fails (a missing file or key, a bad format) raises ``TemplateError``
naming the template line and the placeholder. Values are rounded by ``format``, that is
from the binary float: a gap stored as 3.6499999999999977 shows as 3.6 at ``.1f``.

Settings of a benchmark (widths, epochs, image and channel counts, targets) are not
measurements and stay literal in the template.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "README.in.md"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
LET = re.compile(r"\{\{\s*let\s+([A-Za-z_]\w*)\s*=(.*)\}\}")


class TemplateError(ValueError):
    """A placeholder could not be evaluated or formatted."""


def one(records: list[Mapping[str, Any]], **fields: Any) -> Mapping[str, Any]:
    """The single record of ``records`` whose ``fields`` equal the keywords; an error if
    none or several match, so that a renamed or duplicated row cannot go unnoticed."""
    found = [r for r in records if all(k in r and r[k] == v for k, v in fields.items())]
    if len(found) != 1:
        raise LookupError(f"{len(found)} records match {fields}, expected exactly one")
    return found[0]


HELPERS: dict[str, Callable[..., Any]] = {
    "one": one,
    "min": min,
    "max": max,
    "abs": abs,
    "len": len,
}


def load_results(folder: Path = RESULTS) -> dict[str, Any]:
    """Every ``<name>.json`` in ``folder`` parsed, keyed by ``<name>``."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def split_spec(body: str) -> tuple[str, str]:
    """``"x[1:2] :.2f"`` -> ``("x[1:2]", ".2f")``: the format spec follows the last colon
    outside brackets and quotes; ``""`` when there is none."""
    depth, quote, split = 0, "", -1
    for i, char in enumerate(body):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == ":" and depth == 0:
            split = i
    if split < 0:
        return body.strip(), ""
    return body[:split].strip(), body[split + 1 :].strip()


def render(template: str, results: Mapping[str, Any], source: str = "template") -> str:
    """``template`` with its ``let`` lines dropped and its placeholders replaced by their
    formatted values; ``source`` names the template in errors."""
    namespace: dict[str, Any] = {"__builtins__": {}, **HELPERS, **results}

    def evaluate(expression: str, lineno: int, placeholder: str) -> Any:
        try:
            return eval(compile(expression, f"{source}:{lineno}", "eval"), namespace)
        except Exception as error:
            raise TemplateError(
                f"{source}:{lineno}: {placeholder}: {type(error).__name__}: {error}"
            ) from error

    lines = []
    for lineno, line in enumerate(template.splitlines(keepends=True), start=1):
        let = LET.fullmatch(line.strip())
        if let:
            namespace[let[1]] = evaluate(let[2].strip(), lineno, let[0])
            continue

        def substitute(match: re.Match[str], lineno: int = lineno) -> str:
            expression, spec = split_spec(match[1])
            value = evaluate(expression, lineno, match[0])
            try:
                return format(value, spec)
            except (TypeError, ValueError) as error:
                raise TemplateError(f"{source}:{lineno}: {match[0]}: {error}") from error

        lines.append(PLACEHOLDER.sub(substitute, line))
    return "".join(lines)


def render_readme(template: Path = TEMPLATE, results: Path = RESULTS) -> str:
    """The README that ``template`` and the results in ``results`` give."""
    return render(template.read_text(), load_results(results), template.name)


def readme_diff(readme: Path = README) -> str:
    """A unified diff from ``readme`` to the rendering; empty when they agree."""
    current = readme.read_text() if readme.exists() else ""
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            render_readme().splitlines(keepends=True),
            readme.name,
            f"{readme.name} (rendered from {TEMPLATE.name})",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare README.md with the rendering, write nothing"
    )
    args = parser.parse_args(argv)
    if not args.check:
        README.write_text(render_readme())
        return 0
    diff = readme_diff()
    sys.stdout.write(diff)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
