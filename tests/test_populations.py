"""Populations: the lockstep loop, each recipe's mixing against its formula, checkpoints
that record the recipe, and the LMC tools on the members."""

from __future__ import annotations

import itertools
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import workbench as wb
from workbench.populations import get_population_method
from workbench.populations.papa import papa
from workbench.populations.wash import layer_probabilities, shuffle_entries_

TINY = {"width": 0.25}
FAST = {"model_kwargs": TINY, "batch_size": 64, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(200), "test")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_independent_members_are_train_models_models(tiny_train):
    pop = wb.train_population("cnn", 2, data=tiny_train, epochs=1, seed=5, **FAST)
    kwargs = {**TINY, "in_channels": 1, "num_classes": 10}
    ref = wb.train_models(
        "cnn", [5, 6], tiny_train, 1, model_kwargs=kwargs, batch_size=64, progress=False
    )
    assert pop.seeds == [5, 6]
    assert all(_same(m, r) for m, r in zip(pop.members, ref, strict=True))
    assert len(pop.spread) == 1 and pop.spread[0] > 0.5  # two inits: far apart


def test_same_seed_same_population_and_seed_matters(tiny_train):
    first = wb.train_population("cnn", 2, data=tiny_train, epochs=1, method="wash", **FAST)
    again = wb.train_population("cnn", 2, data=tiny_train, epochs=1, method="wash", **FAST)
    other = wb.train_population("cnn", 2, data=tiny_train, epochs=1, method="wash", seed=1, **FAST)
    assert all(_same(a, b) for a, b in zip(first.members, again.members, strict=True))
    assert not _same(first.members[0], other.members[0])


def test_wash_permutes_entries_across_members():
    generator = torch.Generator().manual_seed(0)
    tensors = tuple(torch.randn(1000) for _ in range(4))
    before = torch.stack(tensors).clone()
    shuffle_entries_(tensors, 1.0, generator)
    after = torch.stack(tensors)
    # every entry keeps its values across the members, in another order for most entries
    assert torch.equal(after.sort(0).values, before.sort(0).values)
    assert (after != before).any(0).float().mean() > 0.9
    shuffle_entries_(tensors, 0.0, generator)
    assert torch.equal(torch.stack(tensors), after)
    tensors = tuple(torch.randn(100_000) for _ in range(2))
    before = torch.stack(tensors).clone()
    shuffle_entries_(tensors, 0.01, generator)  # two members: a shuffled entry swaps half the time
    moved = (torch.stack(tensors) != before).any(0).float().mean().item()
    assert 0.003 < moved < 0.007


def test_wash_probability_falls_linearly_with_depth():
    model = wb.create_model("cnn", **TINY)
    layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
    found = layer_probabilities(model, 0.01, "linear")
    assert len(found) == len(list(model.parameters()))
    assert found[0] == 0.01
    assert found[-1] == pytest.approx(0.01 / len(layers))
    assert found == sorted(found, reverse=True)
    assert set(layer_probabilities(model, 0.01, "constant")) == {0.01}


def test_papa_pulls_toward_the_average_every_period():
    members = [torch.nn.Linear(3, 2) for _ in range(3)]
    before = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in members]
    mean = torch.stack(before).mean(0)
    papa(members, 3, torch.Generator(), strength=0.25, period=10)  # not the 10th step
    assert all(torch.equal(torch.cat([p.reshape(-1) for p in m.parameters()]), b)
               for m, b in zip(members, before, strict=True))  # fmt: skip
    papa(members, 9, torch.Generator(), strength=0.25, period=10)
    for member, old in zip(members, before, strict=True):
        new = torch.cat([p.detach().reshape(-1) for p in member.parameters()])
        torch.testing.assert_close(new, 0.75 * old + 0.25 * mean)


def test_papa_at_full_strength_keeps_one_model(tiny_train):
    pop = wb.train_population(
        "cnn", 3, data=tiny_train, epochs=1, method="papa", strength=1.0, period=1, **FAST
    )
    assert pop.spread[-1] < 1e-6  # averaged after every step: one model (BN stats aside)
    params = [torch.cat([p.reshape(-1) for p in m.parameters()]) for m in pop.members]
    torch.testing.assert_close(params[0], params[2])


def test_spawn_forks_one_trunk(tiny_train):
    steps = 4  # 256 images in batches of 64: 4 steps per epoch
    at_end = wb.train_population(
        "cnn", 3, data=tiny_train, epochs=1, method="spawn", spawn_step=steps, **FAST
    )
    trunk = wb.train_model(wb.training.seeded_model("cnn", 0, {**TINY, "in_channels": 1}),
                           data=tiny_train, epochs=1, seed=0, batch_size=64, progress=False)  # fmt: skip
    assert all(_same(m, trunk) for m in at_end.members)
    early = wb.train_population(
        "cnn", 3, data=tiny_train, epochs=1, method="spawn", spawn_step=2, **FAST
    )
    assert 0 < early.spread[-1] < 0.2  # one start, different data orders: close, not equal
    assert not _same(early.members[0], early.members[1])


def test_bad_recipes_fail_before_training(tiny_train):
    with pytest.raises(ValueError, match="method must be one of"):
        wb.train_population("cnn", 2, data=tiny_train, epochs=1, method="wahs", **FAST)
    with pytest.raises(TypeError, match=r"takes no option 'strength'.*shuffle_probability"):
        wb.train_population(
            "cnn", 2, data=tiny_train, epochs=1, method="wash", strength=0.1, **FAST
        )
    with pytest.raises(ValueError, match="shuffle_probability"):
        wb.train_population(
            "cnn", 2, data=tiny_train, epochs=1, method="wash", shuffle_probability=2.0, **FAST
        )
    with pytest.raises(ValueError, match="past the end of training"):
        wb.train_population(
            "cnn", 2, data=tiny_train, epochs=1, method="spawn", spawn_step=5, **FAST
        )
    with pytest.raises(ValueError, match="n"):
        wb.train_population("cnn", 0, data=tiny_train, epochs=1, **FAST)
    assert set(wb.population_methods()) >= {"independent", "wash", "papa", "spawn"}
    assert get_population_method("papa").options == {"strength": 0.01, "period": 10}


def test_members_are_checkpoints_and_models_for_the_lmc_tools(tiny_train, small_test, tmp_path):
    pop = wb.train_population(
        "cnn", 3, data=tiny_train, epochs=1, method="wash", augment=wb.random_translate(1), **FAST
    )
    paths = pop.write_checkpoints(tmp_path)
    assert [p.name for p in paths] == [f"cnn_wash_seed0_member{i}.safetensors" for i in range(3)]
    recorded = wb.read_metadata(paths[1])
    assert recorded["seed"] == 1 and recorded["dataset"] == "mnist-5k"
    record = recorded["population"]
    assert record["method"] == "wash" and record["member"] == 1 and record["seeds"] == [0, 1, 2]
    assert record["options"] == {"shuffle_probability": 0.001, "layer_schedule": "linear"}
    assert record["augment"]["max_shift"] == 1
    loaded = [wb.load_checkpoint(p) for p in paths]
    assert all(_same(a, b) for a, b in zip(loaded, pop.members, strict=True))
    curves = wb.pairwise_curves(loaded, eval_data={"test": small_test}, alphas=3, bn="reset", data=tiny_train,
                                progress=False, cache=False)  # fmt: skip
    assert sorted(c.settings["pair"] for c in curves) == [
        list(p) for p in itertools.combinations(range(3), 2)
    ]
    merged = wb.merge_many(pop.members, data=tiny_train, method="none", bn="reset", progress=False)
    assert 0 <= wb.evaluate(merged.model, eval_data=small_test).accuracy <= 1
    images = small_test.images[:16]
    with torch.no_grad():
        mean = torch.stack([m(images) for m in pop.members]).mean(0)
        torch.testing.assert_close(wb.ensemble(pop.members)(images), mean)
    frame = pop.to_frame()
    assert list(frame.columns) == ["method", "epoch", "spread"] and len(frame) == 1
    assert isinstance(pop.plot(), Figure)


def test_train_populations_caches_each_population(tiny_train, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    found = wb.train_populations("cnn", 2, seeds=[0, 3], data=tiny_train, epochs=1, method="papa",
                                 progress=False, model_kwargs=TINY, batch_size=64)  # fmt: skip
    direct = wb.train_population("cnn", 2, data=tiny_train, epochs=1, method="papa", seed=3, **FAST)
    assert [p.seeds for p in found] == [[0, 1], [3, 4]]
    assert all(_same(a, b) for a, b in zip(found[1].members, direct.members, strict=True))
    assert found[1].spread == direct.spread and found[1].recipe == direct.recipe
    calls = []
    original = wb.populations.train_population
    monkeypatch.setattr(
        wb.populations, "train_population", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    again = wb.train_populations("cnn", 2, seeds=[0, 3, 4], data=tiny_train, epochs=1, method="papa",
                                 progress=False, model_kwargs=TINY, batch_size=64)  # fmt: skip
    assert len(calls) == 1  # only seed 4 was missing
    assert all(_same(a, b) for a, b in zip(again[0].members, found[0].members, strict=True))


def test_spawn_sweep_draws_the_barrier_against_the_spawn_step(tiny_train, small_test):
    found = wb.spawn_sweep("cnn", [0, 4], data=tiny_train, eval_data=small_test, epochs=1, n=3,
                           model_kwargs=TINY, batch_size=64, alphas=3, cache=False,
                           progress=False)  # fmt: skip
    table = found.table
    assert sorted(set(table["spawn_step"])) == [0, 4] and len(table) == 6  # 3 pairs per step
    assert (table.loc[table["spawn_step"] == 4, "barrier"].abs() < 1e-5).all()  # forked at the end
    spread = {
        k: [np.ptp(c.loss) for c in found.curves if c.settings["spawn_step"] == k] for k in (0, 4)
    }
    assert min(spread[0]) > 0 and max(spread[4]) == 0  # forked at 0: different members
    figure = found.plot()
    assert figure.axes[0].get_xlabel().startswith("Spawn step")
    with pytest.raises(ValueError, match="at least one spawn step"):
        wb.spawn_sweep("cnn", [], data=tiny_train, eval_data=small_test, epochs=1)


def test_members_that_learn_nothing_say_so(shuffled_tiny_train, monkeypatch, tmp_path):
    shuffled = shuffled_tiny_train
    with pytest.warns(wb.DidNotLearnWarning) as caught:
        wb.train_population("cnn", 2, data=shuffled, epochs=2, seed=3, method="papa", **FAST)
    found = sorted(str(w.message)[:32] for w in caught if w.category is wb.DidNotLearnWarning)
    assert found == ["papa member seed=3 did not learn", "papa member seed=4 did not learn"]
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    for _ in range(2):  # trained in jobs, whose warnings stay there; then from the cache
        with ThreadPoolExecutor(2) as pool, pytest.warns(wb.DidNotLearnWarning) as caught:
            wb.train_populations(
                "cnn", 2, seeds=[0, 3], data=shuffled, epochs=2, executor=pool, **FAST
            )
        assert len([w for w in caught if w.category is wb.DidNotLearnWarning]) == 4


def test_members_that_learn_warn_nothing(tiny_train):
    """64 steps each: last-epoch losses near 1.4, far below the labels' entropy (2.3)."""
    settings = {**FAST, "model_kwargs": {"width": 0.5}, "batch_size": 32}
    with warnings.catch_warnings():
        warnings.simplefilter("error", wb.DidNotLearnWarning)
        wb.train_population("cnn", 2, data=tiny_train, epochs=8, lr=0.1, **settings)
