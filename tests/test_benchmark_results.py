"""The published benchmark results are machine-readable and complete: every script in
``benchmarks/`` has its result, ``benchmarks/results/<script>.json``, one JSON document
that names the script that produced it, and there is no result without a script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_every_script_has_one_result_and_every_result_a_script() -> None:
    results = sorted(p.stem for p in (BENCHMARKS / "results").glob("*.json"))
    assert SCRIPTS, "no benchmark script found"
    assert results == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_result_is_one_json_document_of_its_script(name: str) -> None:
    path = BENCHMARKS / "results" / f"{name}.json"
    result = json.loads(path.read_text())  # raises on a second document or progress lines
    assert result["benchmark"] == name
