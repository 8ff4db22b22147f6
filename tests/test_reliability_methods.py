"""The newer methods held to the old ones' standard (issue 26): cached results follow the
code that made them, labels and method outputs are checked before they are trusted,
options no method takes are refused, and dead units have a defined match.

Each class is tried through entry points other than the one it was found with.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import unregister_method
from workbench.fingerprints import code_fingerprint, fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:Group .* statistics come from only")


@pytest.fixture(scope="module")
def pair() -> list[nn.Module]:
    return wb.load_quickstart_models((0, 1))


@pytest.fixture(scope="module")
def small(tiny_train) -> wb.TensorImageDataset:
    return tiny_train.subset(torch.arange(128), "train")


@pytest.fixture
def cache(tmp_path) -> wb.ResultCache:
    return wb.ResultCache(tmp_path / "cache")


# -- 1. a cached result follows the code that made it -------------------------------------
def _define_method(body: str) -> object:
    """A method defined as a notebook cell would define it (module ``__main__``), with a
    helper it calls: ``body`` is the helper's return expression."""
    scope = {"__name__": "__main__", "torch": torch}
    exec(
        "def order(n):\n"
        f"    return {body}\n"
        "def cell_method(model_a, model_b, spec, data=None):\n"
        "    return {g: order(x.size) for g, x in spec.groups.items()}\n",
        scope,
    )
    return scope["cell_method"]


@pytest.fixture
def cell_method():
    """Registers ``cell_method`` from a body; unregistered afterwards."""

    def define(body: str) -> str:
        wb.register_method("cell", needs_data=False, preserves_function=True)(_define_method(body))
        return "cell"

    yield define
    unregister_method("cell")


def test_a_method_fixed_and_registered_again_is_not_served_from_the_cache(
    pair, small, cache, cell_method
) -> None:
    """The bug is in a helper the method calls, not in the method's own body."""
    cell_method("torch.arange(n).flip(0)")  # a bug: reverses every layer
    broken = wb.compare_methods(
        pair, data=small, eval_data=small, methods=["cell"], bn=None, cache=cache
    )
    broken_curves = wb.pairwise_curves(
        pair, eval_data={"test": small}, alphas=3, bn=None, method="cell", cache=cache
    )
    cell_method("torch.arange(n)")  # fixed: plain averaging
    fixed = wb.compare_methods(
        pair, data=small, eval_data=small, methods=["cell"], bn=None, cache=cache
    )
    fixed_curves = wb.pairwise_curves(
        pair, eval_data={"test": small}, alphas=3, bn=None, method="cell", cache=cache
    )
    fresh = wb.compare_methods(
        pair, data=small, eval_data=small, methods=["none"], bn=None, cache=False
    )
    assert fixed["accuracy"].iloc[0] == pytest.approx(fresh["accuracy"].iloc[0])
    assert fixed["accuracy"].iloc[0] != pytest.approx(broken["accuracy"].iloc[0])
    naive = wb.pairwise_curves(
        pair, eval_data={"test": small}, alphas=3, bn=None, method="none", cache=False
    )
    assert fixed_curves[0].loss == pytest.approx(naive[0].loss)
    assert broken_curves[0].loss != pytest.approx(naive[0].loss)


def test_code_fingerprints_follow_helpers_globals_and_closures() -> None:
    assert code_fingerprint(_define_method("torch.arange(n)")) == code_fingerprint(
        _define_method("torch.arange(n)")
    )
    assert code_fingerprint(_define_method("torch.arange(n)")) != code_fingerprint(
        _define_method("torch.arange(n).flip(0)")
    )
    scope = {"__name__": "__main__", "SCALE": 1.0}
    exec("def scaled(x):\n    return SCALE * x\n", scope)
    before = code_fingerprint(scope["scaled"])
    scope["SCALE"] = 2.0
    assert code_fingerprint(scope["scaled"]) != before

    def closure(factor):
        return lambda x: factor * x

    assert code_fingerprint(closure(1.0)) != code_fingerprint(closure(2.0))


def test_a_model_class_calling_a_changed_helper_gets_another_fingerprint() -> None:
    scope = {"__name__": "__main__", "nn": nn, "torch": torch}
    source = (
        "def act(x):\n    return {act}\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n        return self.fc(act(x))\n"
    )
    exec(source.format(act="torch.relu(x)"), scope)
    model = scope["Net"]()
    before = fingerprint(model)
    exec(source.format(act="torch.tanh(x)").split("class Net")[0], scope)  # only act redefined
    assert fingerprint(model) != before


def test_a_method_whose_code_cannot_be_fingerprinted_is_not_cached_and_says_so_once(
    pair, small, cache
) -> None:
    import threading

    lock = threading.Lock()  # read by the method, and not describable as code or data
    calls = []

    def locked(model_a, model_b, spec, data=None):
        calls.append(1)
        with lock:
            return {g: torch.arange(x.size) for g, x in spec.groups.items()}

    wb.register_method("locked", needs_data=False, preserves_function=True)(locked)
    try:
        with pytest.warns(UserWarning, match="'locked' are not cached"):
            wb.compare_methods(
                pair, data=small, eval_data=small, methods=["locked"], bn=None, cache=cache
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once only
            wb.compare_methods(
                pair, data=small, eval_data=small, methods=["locked"], bn=None, cache=cache
            )
        assert len(calls) == 2  # computed both times
    finally:
        unregister_method("locked")


def test_the_fingerprint_of_a_model_is_unchanged_by_a_copy(pair) -> None:
    assert fingerprint(copy.deepcopy(pair[0])) == fingerprint(pair[0])


# -- 3. labels are checked whole, before the work -----------------------------------------
class ListedLabels(torch.utils.data.Dataset):
    """Images read one at a time (counted), labels listed as torchvision's datasets do."""

    def __init__(self, data: wb.TensorImageDataset, bad_at: int) -> None:
        self.images = data.images
        self.targets = data.targets.tolist()
        self.targets[bad_at] = 10
        self.reads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.images[index], self.targets[index]


def _bad_last(data: wb.TensorImageDataset) -> wb.TensorImageDataset:
    targets = data.targets.clone()
    targets[-1] = 10
    return wb.TensorImageDataset(data.images, targets, data.info, data.split)


@pytest.mark.parametrize(
    "run",
    [
        lambda p, d: wb.merge_many(p, data=d, method="np_merge", steps=50, progress=False),
        lambda p, d: wb.np_merge(p, data=d, steps=50, progress=False),
        lambda p, d: wb.align(p[0], p[1], method="ste", data=d, steps=50, progress=False),
        lambda p, d: wb.merge_many(p, data=d, method="cca", progress=False),  # its validation split
        lambda p, d: wb.train_model(p[0], data=d, epochs=3, seed=0, progress=False),
        lambda p, d: wb.evaluate(p[0], eval_data=d),
        lambda p, d: wb.lmc_curves(p[0], p[1], eval_data={"val": d}, alphas=3),
    ],
    ids=[
        "merge_many-np_merge",
        "np_merge",
        "align-ste",
        "merge_many-cca",
        "train",
        "evaluate",
        "lmc",
    ],
)
@pytest.mark.parametrize("kind", ["in-memory", "listed"])
def test_a_label_out_of_range_anywhere_is_refused_before_the_work(pair, small, run, kind) -> None:
    data = _bad_last(small) if kind == "in-memory" else ListedLabels(small, bad_at=len(small) - 1)
    with pytest.raises(ValueError, match=r"labels \[10\] outside \[0, 10\)"):
        run(pair, data)
    if kind == "listed":
        assert data.reads < 8  # a batch of two for a spec or a check; no work started


# -- 4. what a registered method returns is checked, and the method named ---------------
def _nan_merge(models, spec, data=None):
    merged = copy.deepcopy(models[0])
    with torch.no_grad():
        next(merged.parameters()).fill_(float("nan"))
    return merged


def _five_classes(models, spec, data=None):
    merged = wb.create_model("cnn", width=2, in_channels=1, num_classes=5)
    return merged.eval()


def _singular(model_a, model_b, spec, data=None, statistics=None):
    group = next(iter(spec.groups))
    size = spec.groups[group].size
    matrix = torch.eye(size)
    matrix[0] = matrix[1]  # two equal rows
    return {group: matrix}


@pytest.mark.parametrize(
    ("function", "declared", "fragment"),
    [
        (_nan_merge, {"kind": "merge"}, "NaN or infinite values in"),
        (_five_classes, {"kind": "merge"}, "another architecture"),
        (_singular, {"kind": "linear"}, r"is singular \(smallest/largest singular value"),
    ],
    ids=["nan-weights", "five-classes", "singular-map"],
)
def test_a_bad_method_output_is_refused_naming_the_method(
    pair, small, register, function, declared, fragment
) -> None:
    name = register("faulty", function, needs_data=True, preserves_function=False, **declared)
    where = r"Alignment method 'faulty' \(.*\)"
    with pytest.raises(ValueError, match=f"{where}.*{fragment}"):
        wb.merge_many(pair, data=small, method=name, bn=None, progress=False)
    with pytest.raises(ValueError, match=f"{where}.*{fragment}"):
        wb.compare_methods(
            pair, data=small, eval_data=small, methods=[name], bn=None, cache=False, progress=False
        )


def test_a_merge_that_builds_another_structure_must_score_the_same_classes(
    pair, small, register
) -> None:
    def head_of_five(models, spec, data=None):
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5)).eval()

    register("five", head_of_five, kind="merge", needs_data=True, preserves_function=False)
    with pytest.raises(ValueError, match=r"outputs have shape \(2, 5\) where the merged models"):
        wb.merge_many(pair, data=small, method="five", bn=None, progress=False)


def test_a_merger_returning_the_wrong_models_is_refused(pair, small, register) -> None:
    def one_model(models, spec):
        return models[:1]

    register(
        "short",
        lambda model_a, model_b, spec, data=None: wb.weight_matching(model_a, model_b, spec=spec),
        needs_data=False,
        preserves_function=True,
        merger=one_model,
    )
    with pytest.raises(TypeError, match="a merger must return the 2 models it was given"):
        wb.merge_many(pair, data=small, method="short", bn=None, progress=False)


# -- 8. slow paths have a guard ------------------------------------------------------------
def test_an_option_no_called_method_takes_is_refused_before_the_work(pair, small) -> None:
    with pytest.raises(ValueError, match=r"'alpha' is an option of \['zipit'\]"):
        wb.merge_many(pair, data=small, method="cca", alpha=0.5, progress=False)
    with pytest.raises(ValueError, match=r"'gamma' is an option of \['cca'\]"):
        wb.merge_many(pair, data=small, method="np_merge", gamma=0.3, progress=False)
    with pytest.raises(ValueError, match=r"'stpes'.*did you mean 'steps'.*Their options: \["):
        wb.merge_many(pair, data=small, method="np_merge", stpes=3, progress=False)
    with pytest.raises(ValueError, match=r"taken by none of the methods called \(\['weight'"):
        wb.compare_methods(
            pair, data=small, eval_data=small, methods=["weight", "zipit"], bn=None, learn_steps=3
        )


def test_compare_methods_gives_each_method_only_its_own_options(pair, small, cache) -> None:
    first = wb.compare_methods(
        pair,
        data=small,
        eval_data=small,
        methods=["weight", "cca"],
        bn=None,
        cache=cache,
        options={"cca": {"gamma": 0.5}},
    )
    assert first.set_index("method").loc["cca", "gamma"] == 0.5
    calls = []
    real = wb.merge_many

    def counting(*args, **kwargs):
        calls.append(kwargs["method"])
        return real(*args, **kwargs)

    import workbench.analysis.comparison as comparison

    original, comparison.merge_many = comparison.merge_many, counting
    try:  # another gamma: only CCA's row is computed again
        wb.compare_methods(
            pair,
            data=small,
            eval_data=small,
            methods=["weight", "cca"],
            bn=None,
            cache=cache,
            options={"cca": {"gamma": 1.0}},
        )
    finally:
        comparison.merge_many = original
    assert calls == ["cca"]


def test_an_entropic_regularization_too_small_to_converge_is_refused_at_once(pair, small) -> None:
    with pytest.raises(ValueError, match=r"epsilon=1e-07 is below 0.0001.*epsilon=0"):
        wb.ot_fusion(pair[0], pair[1], data=small, epsilon=1e-7, progress=False)
    with pytest.raises(ValueError, match=r"is below 0\.0001"):
        wb.alignment.ot.transport_plan(torch.rand(4, 4), 1e-9)


# -- 7. units that never fire have a defined match: by their weights -----------------------
@pytest.fixture(scope="module")
def sparse_copies(mnist_train):
    """An untrained VGG-style CNN (many units dead on a few images), a permuted copy of
    it, eight images to merge on and 256 others to compare on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = wb.create_model("cnn", width=0.5, in_channels=1, batch_norm=False).eval()
    few = mnist_train.subset(torch.arange(8), "train")
    spec = wb.permutation_spec(model, example_input=few.images[:2])
    permuted = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=5))
    return model, permuted, few, mnist_train.images[1000:1256]


@pytest.mark.parametrize("method", ["activation", "cca", "ot", "zipit"])
@pytest.mark.parametrize("partner", ["itself", "permuted copy"])
def test_dead_units_pair_with_their_twins_off_the_data(sparse_copies, method, partner) -> None:
    model, permuted, few, held_out = sparse_copies
    stats = wb.alignment.collect_statistics(
        [model],
        data=few,
        spec=wb.permutation_spec(model, example_input=few.images[:2]),
        progress=False,
    )
    assert sum(int(s.dead(0).sum()) for s in stats.values()) >= 5  # the case under test
    other = model if partner == "itself" else permuted
    options = {
        "cca": {"gamma": 1.0},
        "ot": {"epsilon": 0.0},
        "zipit": {"within_weight": 0.5, "within_budget": 0.0},
    }
    merged = wb.merge_many(
        [model, other], data=few, method=method, bn=None, progress=False, **options.get(method, {})
    )
    with torch.no_grad():
        difference = (merged.model(held_out) - model(held_out)).abs().max()
    assert difference < 1e-4


def test_class_annotations_python_creates_lazily_leave_fingerprints_alone(small) -> None:
    """Reading ``cls.__annotations__`` creates an empty dict on the class (a kernel client
    does it to ``typing.Generic``): fingerprints must not follow it, or one process would
    miss the cache entries of another."""

    class Plain(wb.TensorImageDataset):
        pass

    data = Plain(small.images, small.targets, small.info, "train")
    before = wb.fingerprints.data_fingerprint(data)
    assert "__annotations__" not in vars(Plain)
    _ = Plain.__annotations__
    assert wb.fingerprints.data_fingerprint(data) == before
