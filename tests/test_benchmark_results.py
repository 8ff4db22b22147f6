"""The published benchmark results are machine-readable and complete: every script in
``benchmarks/`` has its result, ``benchmarks/results/<script>.json``, one JSON document
that names the script that produced it, and there is no result without a script. A
script with a second mode (``ot_fusion.py --plans``) writes ``<script>_<mode>.json``,
whose document names the script and the mode (``"ot_fusion plans"``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
RESULTS = sorted(p.stem for p in (BENCHMARKS / "results").glob("*.json"))


def _producer(result: str) -> tuple[str, str] | None:
    """``(script, mode)`` of the result file ``result`` (mode ``""`` for the main one)."""
    if result in SCRIPTS:
        return result, ""
    owners = [s for s in SCRIPTS if result.startswith(f"{s}_")]
    if not owners:
        return None
    owner = max(owners, key=len)
    return owner, result[len(owner) + 1 :]


def test_every_script_has_its_result_and_every_result_a_script() -> None:
    assert SCRIPTS, "no benchmark script found"
    assert sorted(set(SCRIPTS) - set(RESULTS)) == []
    assert [r for r in RESULTS if _producer(r) is None] == []


@pytest.mark.parametrize("name", RESULTS)
def test_result_is_one_json_document_of_its_script(name: str) -> None:
    path = BENCHMARKS / "results" / f"{name}.json"
    result = json.loads(path.read_text())  # raises on a second document or progress lines
    script, mode = _producer(name)
    assert result["benchmark"] == f"{script} {mode}".strip()
