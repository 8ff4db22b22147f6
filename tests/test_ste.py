"""The straight-through estimator (Git Re-Basin's STE): it recovers a planted permutation,
is seeded, returns a valid permutation that align() applies exactly, never picks a
permutation worse (on its held-out batches) than weight matching's, and refuses bad input
before any work."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import workbench as wb
from workbench.alignment import get_method, inverse, ste
from workbench.graph import permutation_spec


def _equal_perms(p, q) -> bool:
    return p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)


def _tiny(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return wb.create_model("cnn", width=0.25, in_channels=1)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return _tiny(0), _tiny(1)


@pytest.fixture(scope="module")
def spec(pair) -> wb.PermutationSpec:
    return permutation_spec(pair[0], example_input=torch.zeros(2, 1, 28, 28))


def test_a_planted_permutation_is_recovered_exactly(pair, spec, tiny_train) -> None:
    model = pair[0]
    planted = wb.random_permutation(spec, seed=5)
    shuffled = wb.apply_permutation(model, spec=spec, perm=planted)
    found = wb.ste_matching(model, shuffled, data=tiny_train, spec=spec, steps=4, progress=False)
    assert _equal_perms(found, inverse(planted))


def test_the_same_seed_gives_the_same_permutation(pair, spec, tiny_train) -> None:
    # a large step, so that the projection moves and the seeded batch order matters
    options = {"steps": 4, "lr": 0.05, "batch_size": 64, "progress": False}
    first = wb.ste_matching(*pair, data=tiny_train, spec=spec, seed=3, **options)
    again = wb.ste_matching(*pair, data=tiny_train, spec=spec, seed=3, **options)
    assert _equal_perms(first, again)
    assert not _equal_perms(first, wb.weight_matching(*pair, spec=spec))  # it did move


def test_it_never_returns_worse_than_weight_matching_on_its_held_out_batches(
    pair, spec, tiny_train
) -> None:
    fit, held_out = ste._split(tiny_train, 0.1, 0)
    run = ste._trajectory(
        *pair, spec, fit, held_out, steps=4, lr=0.05, batch_size=64, seed=0, progress=False
    )
    points = list(run)
    assert [step for step, _, _ in points] == [0, 1, 2, 3, 4]
    assert _equal_perms(points[0][1], wb.weight_matching(*pair, spec=spec))  # theta starts at A
    losses = [loss for _, _, loss in points]
    assert all(later <= earlier for earlier, later in itertools.pairwise(losses))


def test_align_with_ste_computes_b_function(pair, spec, tiny_train) -> None:
    model_a, model_b = pair
    method = get_method("ste")
    assert method.needs_data and method.preserves_function and method.kind == "permutation"
    result = wb.match(
        model_a, model_b, method="ste", data=tiny_train, spec=spec, steps=2, progress=False
    )
    assert result.options["steps"] == 2 and result.options["lr"] == ste.LR
    aligned = wb.align(
        model_a, model_b, method="ste", data=tiny_train, spec=spec, steps=2, progress=False
    )
    x = tiny_train.images[:32]
    with torch.no_grad():
        expected, found = model_b.eval()(x), aligned.eval()(x)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)


def test_a_dataloader_means_its_dataset(pair, spec, tiny_train) -> None:
    options = {"steps": 2, "lr": 0.05, "batch_size": 64, "progress": False}
    loader = DataLoader(tiny_train, batch_size=7)
    assert _equal_perms(
        wb.ste_matching(*pair, data=loader, spec=spec, **options),
        wb.ste_matching(*pair, data=tiny_train, spec=spec, **options),
    )


def test_bad_input_fails_before_any_work(pair, spec, tiny_train) -> None:
    a, b = pair
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, steps=0)
    with pytest.raises(TypeError, match="steps must be an integer"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, steps=2.0)
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, lr=float("nan"))
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\], got 0"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, lr=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, batch_size=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        wb.ste_matching(a, b, data=tiny_train, spec=spec, val_fraction=1.0)
    with pytest.raises(ValueError, match="ste_matching needs data"):
        wb.ste_matching(a, b, data=None, spec=spec)
    with pytest.raises(ValueError, match="method='ste' needs data"):
        wb.align(a, b, method="ste")
    with pytest.raises(ValueError, match="differ in width"):
        wb.ste_matching(
            a, wb.create_model("cnn", width=0.5, in_channels=1), data=tiny_train, spec=spec
        )
    with pytest.raises(
        ValueError, match=r"20 examples with val_fraction=0\.1 is not possible: .*only 1 member"
    ):
        wb.ste_matching(a, b, data=tiny_train.subset(torch.arange(20), "train"), spec=spec)
    unlabelled = TensorDataset(tiny_train.images[:40])
    with pytest.raises(ValueError, match="The data has no labels, and they are needed here"):
        wb.ste_matching(a, b, data=unlabelled, spec=spec, steps=1, progress=False)


class _Stream(IterableDataset):
    def __init__(self, data: wb.TensorImageDataset) -> None:
        self.data = data

    def __iter__(self):
        return iter(zip(self.data.images, self.data.targets, strict=True))


def test_a_stream_is_refused_with_what_to_pass(pair, spec, tiny_train) -> None:
    with pytest.raises(TypeError, match="pass a map-style Dataset"):
        wb.ste_matching(*pair, data=_Stream(tiny_train), spec=spec, steps=1, progress=False)
