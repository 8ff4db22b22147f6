"""The published benchmark results are machine-readable: one JSON document per file, each
naming the script in ``benchmarks/`` that produced it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


def test_results_exist() -> None:
    assert len(RESULTS) >= 8


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_result_is_one_json_document_from_a_script(path: Path) -> None:
    result = json.loads(path.read_text())  # raises on a second document or progress lines
    script = result["benchmark"].split()[0]
    assert (BENCHMARKS / f"{script}.py").is_file()
