"""The method registry: methods registered in this file alone work through align,
merge_many (with the shared validation search), compare_methods, the LMC dashboard and the
command line; bad registrations and bad results are refused with errors that say why."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import workbench as wb
from tests.conftest import states_equal
from workbench.alignment import (
    Merged,
    cca_maps,
    collect_statistics,
    general_groups,
    get_method,
)
from workbench.cli import main
from workbench.graph import permutation_spec
from workbench.widgets import LMCExplorer

# The built-in methods, in the order they register (alignment first, then merging).
BUILTIN = ["none", "weight", "activation", "c2m3", "cca", "ot", "ste", "np_merge", "zipit"]


def reverse(model_a, model_b, spec, data=None, **options):
    """Every group's channels in reverse order: a permutation that aligns nothing."""
    return {name: torch.arange(group.size).flip(0) for name, group in spec.groups.items()}


def test_builtin_methods_and_the_naive_alias() -> None:
    assert wb.methods() == BUILTIN
    assert wb.alignment.pairwise_methods() == [m for m in BUILTIN if get_method(m).kind != "merge"]
    assert wb.alignment.methods("linear") == ["cca", "ot"]
    assert get_method("naive").name == "none"
    assert get_method("cca").search["gamma"] == wb.merging.GAMMA_GRID


def test_a_method_registered_here_works_everywhere(
    register, shipped_pair, tiny_train, mnist_test, tmp_path
) -> None:
    name = register("reverse", reverse, needs_data=False, preserves_function=True)
    small_train, small_test = tiny_train, mnist_test.subset(torch.arange(0, 1000, 4), "test")
    assert wb.methods()[-1] == "reverse"
    model_a, model_b = shipped_pair

    aligned = wb.align(model_a, model_b, method=name)
    x = small_test.images[:200]
    with torch.no_grad():
        assert (aligned(x) - model_b(x)).abs().max() < 1e-4  # B's function, reordered
    conv1 = model_b.features.conv1.weight
    assert torch.equal(aligned.features.conv1.weight, conv1.flip(0))

    merged = wb.merge_many([model_a, model_b], data=small_train, method=name, progress=False)
    assert merged.report.method == name
    assert 0.0 <= wb.evaluate(merged.model, eval_data=small_test).accuracy <= 1.0

    table = wb.compare_methods(
        [model_a, model_b], data=small_train, eval_data=small_test, methods=(name,), progress=False
    )
    assert set(table["method"]) == {name, *wb.analysis.comparison.REFERENCES}
    accuracy = table.set_index("method").loc[name, "accuracy"]
    assert 0.0 <= accuracy <= 1.0

    explorer = LMCExplorer(list(shipped_pair), eval_data=small_test, data=small_train, alphas=3)
    assert name in [value for _, value in explorer.method.options]
    explorer.method.value = name
    explorer.compute.click()
    assert explorer.curve.label == name and explorer.curve.far_end_is_b
    assert math.isfinite(explorer.curve.barrier) and f"{explorer.curve.barrier:.3f}" in (
        explorer.barrier.value
    )

    argv = ["lmc", "--methods", name, "--limit", "200", "--alphas", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "lmc.csv")
    assert list(rows["label"]) == [name, name] and list(rows["split"]) == ["train", "test"]
    assert rows["barrier"].notna().all()

    # a colour of its own, the same in every figure, whatever else is plotted
    color = wb.figures.color_for(name, 0)
    assert color == wb.figures.color_for(name, 5)
    others = [wb.figures.color_for(m) for m in wb.methods() if m != name]
    assert color not in [*others, wb.figures.color_for("ensemble")]


def test_a_linear_method_is_searched_on_validation_by_its_declared_grid(
    register, shipped_pair, mnist_train
) -> None:
    given = []

    def ridge(model_a, model_b, spec, data=None, *, gamma=0.5, statistics=None):
        """CCA under another name: the maps from the shared statistics."""
        given.append(statistics)
        stats = statistics or collect_statistics(
            [model_a, model_b], data=data, spec=spec, progress=False
        )
        return cca_maps(stats, gamma, spec, general_groups(model_b, spec=spec)).maps

    declared = {"needs_data": True, "preserves_function": False, "kind": "linear"}
    name = register("ridge", ridge, search={"gamma": (0.3, 1.0)}, uses_statistics=True, **declared)
    pair = list(shipped_pair)
    train = mnist_train.subset(torch.arange(0, 4000, 5), "train")  # 800 images
    val = mnist_train.subset(torch.arange(1, 4000, 10), "val")  # 400 others
    merged = wb.merge_many(pair, data=train, method=name, val_data=val, progress=False)
    report = merged.report
    assert set(report.validation) == {"0.3", "1.0"}
    assert all(0.0 <= v <= 1.0 for v in report.validation.values())
    assert report.gamma == max((0.3, 1.0), key=lambda g: report.validation[str(g)])
    assert report.hyperparameters == {"gamma": report.gamma}
    assert report.permuted_groups == {}  # every group of the cnn takes a general map
    # one statistics pass for the whole search, shared by both candidates
    assert len(given) == 2 and given[0] is given[1] is not None
    # the model returned is the one scored: the same as the chosen ridge fixed
    fixed = wb.merge_many(pair, data=train, method=name, gamma=report.gamma, progress=False)
    assert fixed.report.validation == {}
    assert states_equal(fixed.model.state_dict(), merged.model.state_dict())
    assert wb.evaluate(fixed.model, eval_data=val).accuracy == report.validation[str(report.gamma)]


def test_errors_say_what_is_registered_and_what_went_wrong(register, tiny_model) -> None:
    spec = permutation_spec(tiny_model, example_input=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"one of \['none', .*'cca'.*\].*Did you mean 'weight'"):
        wb.align(tiny_model, tiny_model, method="wieght", spec=spec)
    with pytest.raises(
        ValueError,
        match=r"Options \['gama'\] are taken by none of the methods called \(\['weight'\]\): no method takes 'gama' \(did you mean 'gamma', an option of 'cca'",
    ):
        wb.merge_many([tiny_model, tiny_model], method="weight", bn=None, gama=0.1)
    with pytest.raises(ValueError, match="'weight' is already registered"):
        wb.register_method("weight", needs_data=False, preserves_function=True)(reverse)
    with pytest.raises(ValueError, match="kind='linear'"):
        wb.register_method("bad", needs_data=False, preserves_function=False)(reverse)
    name = register("reverse", reverse, needs_data=False, preserves_function=True)
    wb.register_method(name, needs_data=False, preserves_function=True)(reverse)  # a re-run

    def listing(model_a, model_b, spec, data=None):
        return [torch.arange(g.size) for g in spec.groups.values()]

    register("listing", listing, needs_data=False, preserves_function=True)
    with pytest.raises(TypeError, match=r"'listing' \(.*listing\) returned list"):
        wb.align(tiny_model, tiny_model, method="listing", spec=spec)

    def zeros(model_a, model_b, spec, data=None):
        return {name: torch.zeros(g.size, dtype=torch.long) for name, g in spec.groups.items()}

    register("zeros", zeros, needs_data=False, preserves_function=True)
    with pytest.raises(ValueError, match=r"'zeros' .* invalid permutation: .* not a permutation"):
        wb.align(tiny_model, tiny_model, method="zeros", spec=spec)

    def too_small(model_a, model_b, spec, data=None):
        return {name: torch.eye(g.size - 1) for name, g in spec.groups.items()}

    register("small", too_small, needs_data=True, preserves_function=False, kind="linear")
    with pytest.raises(ValueError, match=r"'small' .* invalid linear: maps.* must be 4x4"):
        wb.align(
            tiny_model,
            tiny_model,
            method="small",
            data=TensorDataset(torch.zeros(2, 1, 28, 28)),
            spec=spec,
        )
    with pytest.raises(ValueError, match=r"'small' .* invalid linear"):  # match checks too
        wb.alignment.match(
            tiny_model,
            tiny_model,
            method="small",
            data=TensorDataset(torch.zeros(2, 1, 28, 28)),
            spec=spec,
        )


def first_model_scaled(models, spec, data=None, *, scale=1.0, batch_size=500):
    """A merge that keeps the first model, its last layer's weights times ``scale``."""
    merged = copy.deepcopy(models[0])
    with torch.no_grad():
        [m for m in merged.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(scale)
    return merged


def test_a_merge_method_serves_the_n_model_views_and_is_refused_by_the_pair_views(
    register, shipped_pair, tiny_train, mnist_test
) -> None:
    name = register(
        "keep_first",
        first_model_scaled,
        needs_data=False,
        preserves_function=False,
        kind="merge",
        search={"scale": (-1.0, 1.0)},
    )
    assert name in wb.methods() and name not in wb.alignment.pairwise_methods()
    small_test = mnist_test.subset(torch.arange(0, 1000, 4), "test")
    found = wb.merge_many(list(shipped_pair), data=tiny_train, method=name, progress=False)
    # the sign is chosen on the validation split, and RESET keeps the first model's function
    assert found.report.hyperparameters == {"scale": 1.0}
    assert set(found.report.validation) == {"-1.0", "1.0"}
    assert found.report.validation["-1.0"] < 0.1 < found.report.validation["1.0"]
    accuracy = wb.evaluate(found.model, eval_data=small_test).accuracy
    assert accuracy == pytest.approx(
        wb.evaluate(shipped_pair[0], eval_data=small_test).accuracy, abs=0.02
    )
    table = wb.compare_methods(
        list(shipped_pair), data=tiny_train, eval_data=small_test, methods=(name,), progress=False
    )
    assert table.set_index("method").loc[name, "accuracy"] == pytest.approx(accuracy)
    for refused in (
        lambda: wb.align(*shipped_pair, method=name, data=tiny_train),
        lambda: wb.pairwise_curves(list(shipped_pair), eval_data={"test": small_test}, method=name),
        lambda: wb.merge_many(list(shipped_pair), data=tiny_train, method=name, bn="repair"),
    ):
        with pytest.raises(
            ValueError, match=r"does not align one model|a space of its own: use one of"
        ):
            refused()
    explorer = LMCExplorer(list(shipped_pair), eval_data=small_test, data=tiny_train, alphas=3)
    assert name not in [value for _, value in explorer.method.options]
    with pytest.raises(ValueError, match="without merger="):
        wb.register_method(
            "both", needs_data=False, preserves_function=False, kind="merge", merger=list
        )(first_model_scaled)


@dataclasses.dataclass(frozen=True)
class ScaleReport:
    """The own report of the merge below: what it did."""

    scale: float
    shift: float
    norm: float


def first_model_shifted(models, spec, data=None, *, scale=1.0, shift=0.0):
    """A merge with options of its own (``shift``; ``scale`` searched) and a report of its
    own: the first model, its last layer's bias plus ``shift``, weights times ``scale``."""
    merged = copy.deepcopy(models[0])
    last = [m for m in merged.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.add_(shift)
    return Merged(merged, ScaleReport(scale, shift, float(last.weight.norm())))


def test_a_merge_method_with_its_own_options_and_report(
    register, shipped_pair, tiny_train, mnist_test, tmp_path
) -> None:
    """Registered here alone, with options and a report of its own: merge_many puts the
    report in ``result.report.details`` and refuses a misspelled option listing the
    method's own; compare_methods gives it its own group; the command line takes
    ``--option <method>.<name>=<value>``."""
    name = register(
        "shifted", first_model_shifted, needs_data=False, preserves_function=False,
        kind="merge", search={"scale": (0.5, 1.0)},
    )  # fmt: skip
    pair = list(shipped_pair)
    found = wb.merge_many(pair, data=tiny_train, method=name, shift=0.25, progress=False)
    assert isinstance(found.report.details, ScaleReport)
    assert found.report.details.shift == 0.25
    assert found.report.details.scale == found.report.hyperparameters["scale"]
    with pytest.raises(
        ValueError, match=r"'shfit'.*did you mean 'shift'.*Their options: \['scale', 'shift'\]"
    ):
        wb.merge_many(pair, data=tiny_train, method=name, shfit=0.25, progress=False)
    small_test = mnist_test.subset(torch.arange(0, 1000, 4), "test")
    table = wb.compare_methods(
        pair, data=tiny_train, eval_data=small_test, methods=(name, "none"), bn=None,
        options={name: {"scale": 1.0, "shift": 0.0}, "ste": {"steps": 3}}, progress=False,
    )  # fmt: skip
    kept = wb.evaluate(pair[0], eval_data=small_test).accuracy
    assert table.set_index("method").loc[name, "accuracy"] == pytest.approx(kept)
    with pytest.raises(ValueError, match=r"Their options: \['scale', 'shift'\]"):
        wb.compare_methods(
            pair, data=tiny_train, eval_data=small_test, methods=(name,),
            options={name: {"steps": 3}}, progress=False,
        )  # fmt: skip
    out = tmp_path / "cli"
    argv = ["merge", "--limit", "60", "--bn", "none", "--no-cache", "--out", str(out)]
    code = main([*argv, "--methods", name, "--option", f"{name}.scale=1.0", "--option",
                 f"{name}.shift=0.0"])  # fmt: skip
    assert code == 0
    assert name in set(pd.read_csv(out / "merge.csv")["method"])


def test_every_registered_method_has_a_colour_and_marker_of_its_own(register) -> None:
    """The default assignment over every method registered at once, the built-in ones and
    six registered here without a style, and a seventh with its own label and style."""
    for k in range(6):
        register(f"extra{k}", lambda model_a, model_b, spec, data=None: {}, needs_data=False,
                 preserves_function=True)  # fmt: skip
    register("mine", lambda model_a, model_b, spec, data=None: {}, needs_data=False,
             preserves_function=True, label="My method", color="#123456", marker="*")  # fmt: skip
    names = wb.methods()
    styles = [wb.figures.method_style(m) for m in names]
    colors = [s.color for s in styles] + [wb.figures.color_for("ensemble")]
    markers = [s.marker for s in styles]
    assert len(set(colors)) == len(colors), dict(zip(names, colors, strict=False))
    assert len(set(markers)) == len(markers), dict(zip(names, markers, strict=False))
    assert wb.figures.method_label("mine") == "My method"
    assert wb.figures.color_for("My method + RESET") == "#123456"


def test_an_unregistered_method_frees_its_colour() -> None:
    wb.register_method("passing", needs_data=False, preserves_function=True)(
        lambda model_a, model_b, spec, data=None: {}
    )
    color = wb.figures.color_for("passing")
    assert color not in [wb.figures.color_for(m) for m in wb.methods() if m != "passing"]
    wb.alignment.unregister_method("passing")
    assert wb.figures.method_style("passing") is None
    wb.register_method("again", needs_data=False, preserves_function=True)(
        lambda model_a, model_b, spec, data=None: {}
    )
    assert wb.figures.color_for("again") == color  # the first free colour, once more
    wb.alignment.unregister_method("again")
