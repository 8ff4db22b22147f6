"""Packaging: pyproject.toml asks for ranges, constraints.txt pins the tested torch and
torchvision, and the Makefile and environment.yml install the same dependencies with those
pins and register the notebooks' Jupyter kernel the same way."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}  # the versions the tests run on
KERNEL = "merge-workbench"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _by_name(requirements: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    by_name = {r.name.lower().replace("_", "-"): r for r in parsed}
    assert len(by_name) == len(parsed), f"a dependency is listed twice: {requirements}"
    return by_name


def _runtime() -> dict[str, Requirement]:
    return _by_name(_project()["dependencies"])


def _dev() -> dict[str, Requirement]:
    return _by_name(_project()["optional-dependencies"]["dev"])


def _constraints() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return _by_name([line for line in lines if line.strip() and not line.startswith("#")])


def _environment_pip_lines() -> list[str]:
    lines, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            in_pip = True
        elif in_pip and line.strip().startswith("- "):
            lines.append(line.strip()[2:].strip())
    return lines


def test_pyproject_asks_for_ranges_not_pins() -> None:
    """Every dependency is a lower bound (no ``==``, no upper cap), torch and torchvision
    included, and any Python from 3.11 on is accepted."""
    assert _project()["requires-python"] == ">=3.11"
    for name, requirement in {**_runtime(), **_dev()}.items():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators == {">="}, f"{name}: {requirement} is not a plain lower bound"
    assert str(_runtime()["torch"].specifier) == ">=2.4"
    assert str(_runtime()["torchvision"].specifier) == ">=0.19"


def test_constraints_pin_the_tested_torch_within_the_ranges() -> None:
    constraints = _constraints()
    assert {name: str(r.specifier) for name, r in constraints.items()} == {
        name: f"=={version}" for name, version in PINS.items()
    }
    runtime = _runtime()
    for name, version in PINS.items():
        assert runtime[name].specifier.contains(Version(version)), (name, runtime[name])


def test_runtime_dependencies_of_the_methods_and_the_caches() -> None:
    """POT (``import ot``, optimal-transport matching) and platformdirs (the user cache
    folder of :func:`workbench.cache_dir`) are needed at run time, not only by the tests."""
    runtime, dev = _runtime(), _dev()
    assert "pot" in runtime and "pot" not in dev
    assert "platformdirs" in runtime


def test_environment_yml_installs_the_pyproject_dependencies_with_the_constraints() -> None:
    """environment.yml's pip section: the constraints file first (pip reads ``-c`` lines in
    a requirements file, relative to it; conda writes its temporary one beside
    environment.yml), then exactly pyproject's runtime and dev dependencies, then the
    package in editable mode."""
    lines = _environment_pip_lines()
    assert lines[0] == "-c constraints.txt"
    assert lines[-1] == "-e ."
    listed = _by_name(lines[1:-1])
    assert {n: str(r) for n, r in listed.items()} == {
        n: str(r) for n, r in {**_runtime(), **_dev()}.items()
    }
    assert "  - python=3.11\n" in (ROOT / "environment.yml").read_text()  # the tested Python


def _make_recipe() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, flags=re.MULTILINE))
    recipe = text.split("$(STAMP):", 1)[1].split("\n\n", 1)[0].splitlines()
    assert recipe[0].split() == ["pyproject.toml", "constraints.txt"]  # reinstall on change

    def expand(line: str) -> str:  # $(NAME) -> its value, recursively
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables[m[1]]), line)

    return [expand(line.strip()) for line in recipe[1:]]


def test_makefile_installs_with_the_constraints() -> None:
    recipe = _make_recipe()
    assert ".venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'" in recipe
    assert not any("torch==" in line or "torchvision==" in line for line in recipe)


def test_kernel_registration_is_the_same_command_everywhere() -> None:
    """conda cannot run commands, so environment.yml's header gives the one command that
    registers the kernel; it is the one `make` runs, and the kernel it names is the one
    every notebook asks for."""
    header = [
        line.lstrip("# ").strip()
        for line in (ROOT / "environment.yml").read_text().splitlines()
        if line.startswith("#")
    ]
    conda = [shlex.split(line) for line in header if "ipykernel install" in line]
    make = [shlex.split(line) for line in _make_recipe() if "ipykernel install" in line]
    assert len(conda) == len(make) == 1
    arguments = ["-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL]
    arguments += ["--display-name", f"Python ({KERNEL})"]
    assert conda[0] == ["python", *arguments]  # the environment's own Python
    assert make[0] == [".venv/bin/python", *arguments]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert (spec["name"], spec["display_name"]) == (KERNEL, f"Python ({KERNEL})"), path.name


def test_installed_torch_matches_the_constraints() -> None:
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == PINS["torch"]
    assert torchvision.__version__.split("+")[0] == PINS["torchvision"]
