"""The house rules of the package layout (design notes, section 2), checked on the source.

* imports point one way, down the floors below: a room imports only from lower floors
  (or from inside itself);
* no module over 400 lines;
* ``import workbench`` and ``workbench info`` load neither lucent, kornia nor ipywidgets.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"

# Each room's floor: a room may import rooms on lower floors, and itself.
FLOORS = {
    "modules": 0,
    "figures": 0,
    "data": 0,
    "files": -1,
    "vocabulary": -1,
    "batching": 0.25,
    "validation": 0.5,
    "splits": 0.75,
    "evaluation": 1,
    "zoo": 1,
    "checkpoints": 2,
    "fingerprints": 2.5,
    "results": 2.75,
    "cache": 3,
    "jobs": 3.25,
    "training_health": 3.4,
    "training": 3.5,
    "populations": 3.75,
    "graph": 4,
    "alignment": 5,
    "tuning": 5,
    "merging": 6,
    "analysis": 7,
    "featviz": 8,
    "widgets": 9,
    "cli": 9,
    "__init__": 10,
    "__main__": 10,
}
HEAVY = ("lucent", "kornia", "ipywidgets")
MAX_LINES = 400


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_rooms(path: Path) -> set[str]:
    """The rooms of ``workbench`` that a module imports (absolute imports; the package
    uses no relative ones)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "workbench" and len(parts) > 1 and parts[1] in FLOORS:
                rooms.add(parts[1])
    return rooms


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_floor() -> None:
    rooms = {_room(p) for p in _modules()}
    assert rooms - set(FLOORS) == set(), "give the new room a floor in FLOORS"
    assert len(rooms) >= 15


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    room = _room(path)
    upward = {
        other for other in _imported_rooms(path) if other != room and FLOORS[other] >= FLOORS[room]
    }
    assert not upward, f"{room} (floor {FLOORS[room]}) imports {sorted(upward)}"


def test_the_floor_check_catches_an_upward_import(tmp_path: Path) -> None:
    module = PACKAGE / "graph" / "spec.py"
    assert "modules" in _imported_rooms(module)  # a real downward import is seen
    upward = tmp_path / "bad.py"
    upward.write_text("from workbench.merging import average\n")
    assert _imported_rooms(upward) == {"merging"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines: split it by concept"


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport sys\nprint('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    last = result.stdout.splitlines()[-1]
    assert last.startswith("loaded:"), result.stdout
    return [m for m in last.removeprefix("loaded:").split(",") if m]


def test_import_workbench_loads_no_heavy_module() -> None:
    assert _loaded_after("import workbench as wb\nwb.methods()") == []


def test_workbench_info_loads_no_heavy_module() -> None:
    checkpoint = ROOT / "data" / "models" / "cnn_mnist-5k_seed0.safetensors"
    code = f"from workbench.cli import main\nassert main(['info', {str(checkpoint)!r}]) == 0"
    assert _loaded_after(code) == []


def test_the_heavy_parts_load_when_asked_for() -> None:
    # the lazy attributes really import them: the checks above do not pass by accident
    assert "lucent" in _loaded_after("import workbench as wb\nwb.render_channels")
    assert "ipywidgets" in _loaded_after("import workbench as wb\nwb.widgets.LMCExplorer")
