"""Every analysis result follows one protocol: ``to_frame()`` (a DataFrame),
``plot(ax=None)`` (a Figure; drawn on ``ax`` when given), ``save``/``load`` (the same
result back, exactly) and ``write_csv``. Every subclass of :class:`workbench.Result` must
have an example below, so a new result class cannot skip the protocol."""

from __future__ import annotations

import dataclasses
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file

import workbench as wb
import workbench.featviz as fv
from workbench.analysis.diagnostics import MatchedCorrelations, PartialAlignment
from workbench.analysis.sweeps import Sweep
from workbench.featviz.exemplars import Exemplars
from workbench.featviz.tradeoff import StepsTradeoff
from workbench.results import Result, load_result


def _curve(label: str = "weight", value: float = 1.0) -> wb.LMCCurve:
    alphas = np.linspace(0, 1, 5)
    loss = np.array([0.1, 0.4, value, np.nan, 0.2])
    accuracy = np.array([0.9, 0.8, 0.5, 0.7, 0.9])
    return wb.LMCCurve(alphas, loss, accuracy, "test", "reset", label, {"pair": [0, 1]})


def _examples() -> dict[type, Result]:
    groups = ["relu1", "relu2"]
    before = {g: np.linspace(-0.2, 0.5, 4) for g in groups}
    after = {g: np.linspace(0.3, 0.9, 4) for g in groups}
    plane = wb.LossPlane(
        np.linspace(-1, 2, 3),
        np.linspace(-1, 2, 4),
        np.arange(12.0).reshape(4, 3) + 0.5,
        np.full((4, 3), 0.8),
        np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]),
        "test",
        "repair",
        "activation",
        ("a", "b", "c"),
        {"margin": 0.2},
    )
    curves = [dataclasses.replace(_curve(), settings={"width": w, "pair": [0, 1]}) for w in (1, 2)]
    partial = [dataclasses.replace(_curve(), settings={"groups_aligned": k}) for k in (0, 1, 2)]
    return {
        wb.LMCCurve: _curve(),
        wb.LossPlane: plane,
        Sweep: Sweep("width", curves, {"epochs": 2}),
        MatchedCorrelations: MatchedCorrelations("weight", groups, before, after, {"n": 3}),
        PartialAlignment: PartialAlignment("weight", groups, partial),
        fv.UnitMatch: fv.UnitMatch(
            "conv1", "relu1", "weight", torch.tensor([2, 0, 1]), torch.tensor([0.9, 0.2, 0.5])
        ),
        Exemplars: Exemplars(
            "conv1",
            [3, 5],
            torch.tensor([[4, 1], [0, 2]]),
            torch.tensor([[2.0, 1.5], [0.7, 0.1]]),
            torch.rand(2, 2, 3, 3),
            torch.rand(2, 2, 1, 6, 6),
        ),
        StepsTradeoff: StepsTradeoff(
            "conv1",
            (0, 1),
            (8, 16),
            {8: torch.rand(2, 6, 6, 1), 16: torch.rand(2, 6, 6, 1)},
            {8: 0.5, 16: 1.0},
            {8: 0.9, 16: 1.8},
            torch.tensor([[0.2, 0.4], [0.6, 0.9]]),
            torch.rand(2, 2),
            torch.rand(2, 2),
            torch.rand(2),
            torch.rand(2),
        ),
    }


def _subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _assert_equal(a, b) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _assert_equal(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_equal(a[k], b[k])
    else:
        assert a == b or (a != a and b != b), (a, b)


def test_every_result_class_has_an_example() -> None:
    assert _subclasses(Result) - set(_examples()) == set()


@pytest.mark.parametrize("kind", list(_examples()), ids=lambda k: k.__name__)
def test_result_protocol(kind: type, tmp_path) -> None:
    result = _examples()[kind]
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    fig, ax = plt.subplots()
    assert result.plot(ax=ax) is fig
    assert ax.has_data() or ax.images
    plt.close(fig)
    own = result.plot()
    assert isinstance(own, Figure) and own.axes
    plt.close(own)
    path = result.save(tmp_path / "result")
    assert path.name == "result.safetensors"
    back = kind.load(path)
    _assert_equal(result, back)
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    csv = result.write_csv(tmp_path / "t.csv")
    assert len(pd.read_csv(csv)) == len(frame)


def test_save_keeps_types_and_refuses_to_overwrite(tmp_path) -> None:
    curve = dataclasses.replace(_curve(), settings={"pair": (0, 1), 3: "int key", "x": None})
    path = curve.save(tmp_path / "c.safetensors")
    back = wb.LMCCurve.load(path)
    assert back.settings == {"pair": (0, 1), 3: "int key", "x": None}
    assert np.isnan(back.loss[3]) and back.accuracy_barrier == curve.accuracy_barrier
    with pytest.raises(FileExistsError):
        curve.save(path)
    assert wb.LMCCurve.load(curve.save(path, overwrite=True)).label == "weight"


def test_load_names_the_class_in_the_file(tmp_path) -> None:
    path = _examples()[wb.LossPlane].save(tmp_path / "plane")
    assert isinstance(load_result(path), wb.LossPlane)
    with pytest.raises(TypeError, match="holds a LossPlane, not a LMCCurve"):
        wb.LMCCurve.load(path)


def test_a_file_cannot_name_a_class_outside_the_workbench(tmp_path) -> None:
    path = tmp_path / "evil.safetensors"
    tree = {"dataclass": ["os:system", {}]}
    meta = {"workbench-result-file": json.dumps({"format": 1, "result": tree})}
    save_file({}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="outside the workbench"):
        load_result(path)
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not a result file"):
        load_result(path)
