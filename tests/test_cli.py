"""The ``workbench`` command: demo, info and train, in-process and as an installed script."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.cli import main


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code, stdout, _ = _run(["demo", "--out", str(out), "--alphas", "3"])
    return code, stdout, out


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    argv = ["train", "cnn", "--seeds", "0", "--epochs", "1", "--width", "0.25", "--out", str(out)]
    code, stdout, _ = _run(argv)
    return code, stdout, out, argv


# --- demo --------------------------------------------------------------------------------


def test_demo_writes_figures_and_csv(demo_run):
    code, _, out = demo_run
    assert code == 0
    for name in ("lmc_methods.pdf", "lmc_methods.png", "lmc_methods.csv"):
        assert (out / name).is_file(), name
    assert (out / "lmc_methods.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "lmc_methods.png").read_bytes().startswith(b"\x89PNG")


def test_demo_table_shows_what_alignment_removes(demo_run):
    """Every method is there, each aligned + RESET barrier is below the naive one, and the
    removed share is computed from the barriers."""
    _, stdout, out = demo_run
    table = pd.read_csv(out / "lmc_methods.csv")
    assert list(table["method"]) == [
        "naive", "naive + RESET", "weight + RESET", "activation + RESET", "cca + RESET"
    ]  # fmt: skip
    naive = table.set_index("method").loc["naive", "test_barrier"]
    aligned = table[table["method"] != "naive"]
    assert (aligned["test_barrier"] < naive).all()
    removed = 1.0 - table["test_barrier"] / naive
    assert np.allclose(table["naive_barrier_removed"], removed)
    weight = table.set_index("method").loc["weight + RESET"]
    assert weight["test_barrier"] <= naive / 10  # the headline on the shipped pair
    for method in table["method"]:
        assert method in stdout
    assert "cnn_mnist-5k_seed0" in stdout and str(out / "lmc_methods.csv") in stdout


def test_demo_curves_are_the_shipped_pairs(demo_run, shipped_pair, mnist_test):
    _, _, out = demo_run
    frame = pd.read_csv(out / "lmc_methods_curves.csv", keep_default_na=False)
    assert list(frame.columns) == ["label", "bn", "split", "alpha", "loss", "accuracy"]
    assert set(frame["split"]) == {"test"} and sorted(set(frame["alpha"])) == [0.0, 0.5, 1.0]
    # The naive test endpoint is the shipped model A's test loss.
    row = frame[(frame["label"] == "naive") & (frame["bn"] == "none") & (frame["alpha"] == 0.0)]
    assert row["loss"].item() == pytest.approx(
        wb.evaluate(shipped_pair[0], eval_data=mnist_test).loss, rel=1e-12
    )


def test_demo_figure_has_one_legend_entry_per_method(demo_run, monkeypatch):
    """The figure the demo saves shows every series: one legend entry each."""
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(
        "workbench.figures.save", lambda fig, stem, formats: saved.append(fig) or []
    )
    code, _, err = _run(["demo", "--out", str(demo_run[2]), "--alphas", "3", "--overwrite"])
    assert code == 0, err
    (fig,) = saved
    assert isinstance(fig, matplotlib.figure.Figure)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    # besides one entry per series, a linear method's far end shows B itself as a star
    assert [label for label in labels if not label.endswith(": model B itself")] == [
        "naive", "naive + RESET", "weight + RESET", "activation + RESET", "cca + RESET"
    ]  # fmt: skip


def test_demo_missing_models(tmp_path):
    missing = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    code, _, err = _run(["demo", "--models", *missing, "--out", str(tmp_path / "o")])
    assert code == 2
    assert "No checkpoint at" in err
    assert not (tmp_path / "o").exists()


# --- info --------------------------------------------------------------------------------


def test_info_prints_json(capsys):
    path = wb.shipped_models_dir() / "cnn_mnist-5k_seed0.safetensors"
    assert main(["info", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["architecture"]["name"] == "cnn"
    assert printed == wb.read_metadata(path)


def test_info_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "absent.safetensors")]) == 2
    assert "error: No checkpoint at" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not a safetensors file" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- train -------------------------------------------------------------------------------


def test_train_writes_checkpoint(train_run, mnist_test):
    code, stdout, out, _ = train_run
    assert code == 0
    path = out / "cnn_mnist-5k_seed0.safetensors"
    assert [p.name for p in out.iterdir()] == [path.name]
    assert f"{path}: test accuracy" in stdout
    meta = wb.read_metadata(path)
    assert meta["architecture"] == {
        "name": "cnn",
        "width": 0.25,
        "num_classes": 10,
        "in_channels": 1,
    }
    assert meta["seed"] == 0
    assert meta["dataset"] == "mnist-5k"
    assert meta["recipe"] == {"epochs": 1, "lr": 0.2, "batch_size": 128, "translate": 2}
    model = wb.load_checkpoint(path)
    assert meta["metrics"]["test_accuracy"] == wb.evaluate(model, eval_data=mnist_test).accuracy
    assert meta["metrics"]["epochs"] == 1


def test_train_refuses_to_overwrite(train_run):
    _, _, out, argv = train_run
    path = out / "cnn_mnist-5k_seed0.safetensors"
    before = path.read_bytes()
    code, stdout, stderr = _run(argv)
    assert code == 2
    assert str(path) in stderr
    assert "--overwrite" in stderr
    assert stdout == ""
    assert path.read_bytes() == before


def test_train_unknown_arch(tmp_path):
    code, _, err = _run(["train", "nonet", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])
    assert code == 2
    assert "Unknown model 'nonet'" in err
    assert list(tmp_path.iterdir()) == []


def test_train_missing_dataset_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "cache"))
    argv = ["train", "cnn", "--dataset", "mnist", "--seeds", "0", "--out", str(tmp_path / "o")]
    code, _, err = _run(argv)
    assert code == 2
    assert "Could not find 'mnist'" in err


# --- as a program ------------------------------------------------------------------------


def test_module_help():
    result = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for command in ("train", "demo", "info", "lmc", "plane", "sweep"):
        assert command in result.stdout


def test_console_script_help():
    script = Path(sys.executable).parent / "workbench"
    if not script.is_file():
        pytest.skip(f"no installed console script at {script}")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: workbench" in result.stdout


# --- lmc, plane, sweep -------------------------------------------------------------------


def _subset(split, n):
    return split.subset(torch.linspace(0, len(split) - 1, n).long(), split.split)


def test_lmc_command(tmp_path, shipped_pair, mnist_train, mnist_test):
    argv = ["lmc", "--methods", "none", "weight", "--alphas", "3", "--limit", "300"]
    code, stdout, _ = _run([*argv, "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lmc.csv",
        "lmc.pdf",
        "lmc.png",
        "lmc.svg",
        "lmc_curves.csv",
    ]
    table = pd.read_csv(tmp_path / "lmc.csv")
    assert list(table["label"]) == ["naive", "naive", "weight", "weight"]  # display names
    assert list(table["split"]) == ["train", "test"] * 2 and set(table["pair"]) == {"0-1"}
    weight = table[(table.label == "weight") & (table.split == "test")]["barrier"].item()
    none = table[(table.label == "naive") & (table.split == "test")]["barrier"].item()
    assert weight < none
    # The same numbers as the library call on the same evenly spaced subsets.
    train, test = _subset(mnist_train, 300), _subset(mnist_test, 300)
    expected = wb.lmc_curve(
        *shipped_pair, eval_data=test, alphas=3, bn="reset", data=train, progress=False
    )
    curves = pd.read_csv(tmp_path / "lmc_curves.csv")
    naive = curves[(curves.label == "naive") & (curves.split == "test")]
    np.testing.assert_allclose(naive["loss"], expected.loss, rtol=1e-12)
    assert "cnn_mnist-5k_seed0, cnn_mnist-5k_seed1" in stdout and "Wrote" in stdout


def test_lmc_command_with_three_models_draws_bands(tmp_path):
    paths = [str(wb.shipped_models_dir() / f"cnn_mnist-5k_seed{s}.safetensors") for s in range(3)]
    argv = ["lmc", "--models", *paths, "--methods", "weight", "--bn", "none", "--alphas", "3"]
    code, _, _ = _run([*argv, "--limit", "200", "--band", "range", "--out", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "lmc.csv")
    assert list(table["pair"]) == ["0-1", "0-1", "0-2", "0-2", "1-2", "1-2"]
    assert (tmp_path / "lmc.svg").read_bytes().count(b"<svg") == 1


def test_merge_command(tmp_path, shipped_pair, mnist_train, mnist_test):
    argv = ["merge", "--methods", "naive", "weight", "--limit", "300", "--no-cache"]
    code, stdout, _ = _run([*argv, "--out", str(tmp_path)])
    assert code == 0, stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "merge.csv",
        "merge.pdf",
        "merge.png",
        "merge.svg",
    ]
    table = pd.read_csv(tmp_path / "merge.csv").set_index("method")
    assert set(table.index) == {"naive", "weight", *wb.analysis.comparison.REFERENCES}
    # the same number as the library call on the same evenly spaced subsets
    train, test = _subset(mnist_train, 300), _subset(mnist_test, 300)
    merged = wb.merge_many(list(shipped_pair), data=train, method="weight", progress=False).model
    assert table.loc["weight", "accuracy"] == pytest.approx(
        wb.evaluate(merged, eval_data=test).accuracy
    )
    assert table.loc["weight", "accuracy"] > table.loc["naive", "accuracy"]
    assert "Merging the first N of cnn_mnist-5k_seed0, cnn_mnist-5k_seed1" in stdout


def test_plane_command(tmp_path):
    argv = ["plane", "--resolution", "2", "--limit", "200", "--bn", "none", "--margin", "0"]
    code, stdout, _ = _run([*argv, "--out", str(tmp_path)])
    assert code == 0, stdout
    frame = pd.read_csv(tmp_path / "plane_weight.csv")
    assert len(frame) == 4 and {"x", "y", "weight_1", "loss", "accuracy"} <= set(frame.columns)
    assert set(frame["split"]) == {"test"} and set(frame["label"]) == {"weight"}
    for suffix in ("pdf", "svg", "png"):
        assert (tmp_path / f"plane_weight.{suffix}").stat().st_size > 0
    assert "min_loss" in stdout


def test_sweep_command(tmp_path):
    argv = ["sweep", "width", "0.25", "--epochs", "1", "--limit", "300", "--methods", "weight"]
    code, _, _ = _run([*argv, "--alphas", "3", "--out", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "sweep_width.csv")
    assert list(table["width"]) == [0.25] and list(table["method"]) == ["weight"]
    curves = pd.read_csv(tmp_path / "sweep_width_curves.csv")
    assert list(curves["alpha"]) == [0.0, 0.5, 1.0]
    assert (tmp_path / "sweep_width.pdf").stat().st_size > 0


def test_sweep_command_on_local_workers(tmp_path):
    argv = ["sweep", "width", "0.25", "0.5", "--epochs", "1", "--limit", "200", "--alphas", "3"]
    argv += ["--methods", "weight", "--no-cache"]
    code, _, stderr = _run([*argv, "--executor", "local:2", "--out", str(tmp_path / "pool")])
    assert code == 0, stderr
    pooled = pd.read_csv(tmp_path / "pool" / "sweep_width.csv")
    assert list(pooled["width"]) == [0.25, 0.5] and list(pooled["method"]) == ["weight"] * 2
    code, _, _ = _run([*argv, "--out", str(tmp_path / "here")])
    here = pd.read_csv(tmp_path / "here" / "sweep_width.csv")
    # the same models to rounding (the workers run with one torch thread each)
    assert pooled["endpoint_accuracy"].tolist() == pytest.approx(
        here["endpoint_accuracy"].tolist(), abs=0.02
    )


@pytest.mark.skipif(importlib.util.find_spec("submitit") is not None, reason="submitit installed")
def test_sweep_on_slurm_without_submitit_says_how_to_install_it(tmp_path):
    code, _, stderr = _run(["sweep", "width", "0.25", "--executor", "slurm", "--partition", "gpu",
                            "--out", str(tmp_path)])  # fmt: skip
    assert code == 2 and "pip install 'merge-workbench[cluster]'" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "width", "1", "--executor", "pool"], "--executor must be local:N or slurm"),
        (["sweep", "width", "1", "--executor", "local:0"], "a positive number of workers"),
        (["lmc", "--models", "a.safetensors"], "Expected at least 2 checkpoints"),
        (["merge", "--models", "a.safetensors"], "Expected at least 2 checkpoints"),
        (["plane", "--models", "a", "b"], "Expected 3 checkpoints after --models, got 2"),
        (["lmc", "--models", "a.safetensors", "b.safetensors"], "No checkpoint at"),
        (["lmc", "--limit", "0"], "--limit must be a positive number of images, got 0"),
        (["sweep", "width", "-1"], "Every width must be a positive number, got -1.0"),
    ],
)
def test_analysis_commands_report_bad_input(tmp_path, argv, message):
    code, _, stderr = _run([*argv, "--out", str(tmp_path / "o")])
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


# --- one overwrite policy for every command that writes ----------------------------------
QUICK = {
    "lmc": ["lmc", "--limit", "60", "--methods", "none", "--alphas", "3", "--bn", "none"],
    "merge": ["merge", "--limit", "60", "--methods", "none", "--bn", "none"],
    "plane": ["plane", "--limit", "60", "--method", "none", "--resolution", "3", "--bn", "none"],
    "sweep": [
        "sweep", "width", "0.25", "--epochs", "1", "--limit", "60", "--methods", "none",
        "--alphas", "3", "--bn", "none",
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(QUICK))
def test_a_command_writes_what_it_declares_and_never_replaces_it_silently(tmp_path, command):
    from workbench.cli import build_parser
    from workbench.cli.outputs import WRITES

    argv = [*QUICK[command], "--out", str(tmp_path), "--no-cache"]
    code, _, err = _run(argv)
    assert code == 0, err
    declared = set(WRITES[command](build_parser().parse_args(argv)))
    assert set(tmp_path.iterdir()) == declared
    before = {path: path.read_bytes() for path in declared}
    code, stdout, err = _run(argv)
    assert code == 2 and stdout == ""
    assert "would be replaced; pass --overwrite" in err
    assert any(str(path) in err for path in declared)
    assert {path: path.read_bytes() for path in declared} == before
    code, _, err = _run([*argv, "--overwrite"])
    assert code == 0, err


def test_demo_refuses_to_replace_its_files_before_any_work(demo_run, monkeypatch):
    _, _, out = demo_run
    figure = out / "lmc_methods.pdf"
    before = figure.read_bytes()
    monkeypatch.setattr("workbench.cli.commands.pairwise_curves", _must_not_run)
    code, _, err = _run(["demo", "--out", str(out), "--alphas", "3"])
    assert code == 2 and str(figure) in err and "--overwrite" in err
    assert figure.read_bytes() == before


def _must_not_run(*args, **kwargs):
    raise AssertionError("the command started its work before refusing")


# --- Ctrl-C stops the work at once; a rerun computes only what is missing ---------------
def test_sigint_stops_a_command_even_where_the_shell_ignores_it(tmp_path):
    """A non-interactive shell starts background jobs with SIGINT ignored; the command
    still stops on it, within seconds, with the shell's status for an interrupt."""
    import os
    import signal
    import time

    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["merge", "--methods", "np_merge", "ste", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 120
    while "compare methods" not in (line := process.stderr.read1(4096).decode()):
        assert process.poll() is None and time.monotonic() < deadline, line
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "interrupted" in err.decode() and "compute only what is missing" in err.decode()
    assert not (tmp_path / "out" / "merge.csv").exists()


def test_after_an_interrupt_the_rerun_computes_only_what_is_missing(tmp_path, monkeypatch):
    from workbench.analysis import comparison

    merged = []
    real = comparison.merge_many

    def interrupt_second(models, **kwargs):
        if len(merged) == 1:
            raise KeyboardInterrupt
        merged.append(kwargs["method"])
        return real(models, **kwargs)

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(comparison, "merge_many", interrupt_second)
    argv = ["merge", "--limit", "60", "--methods", "none", "weight", "--bn", "none"]
    argv += ["--out", str(tmp_path / "out")]
    code, _, err = _run(argv)
    assert code == 130 and "interrupted" in err and merged == ["none"]
    monkeypatch.setattr(
        comparison, "merge_many", lambda *a, **k: merged.append(k["method"]) or real(*a, **k)
    )
    code, _, err = _run(argv)
    assert code == 0, err
    assert merged == ["none", "weight"]  # "none" came from the cache


def test_merge_takes_the_methods_options_and_a_quick_preset(tmp_path):
    base = ["merge", "--limit", "60", "--bn", "none", "--no-cache", "--out", str(tmp_path)]
    code, _, err = _run([*base, "--methods", "weight", "--option", "gamma=0.3"])
    assert code == 2 and "'gamma' is an option of ['cca']" in err
    code, _, err = _run([*base, "--methods", "cca", "--option", "gamma"])
    assert code == 2 and "--option takes NAME=VALUE" in err
    code, _, err = _run([*base, "--methods", "cca", "zipit", "--quick", "--option", "gamma=0.3"])
    assert code == 0, err
    table = pd.read_csv(tmp_path / "merge.csv").set_index("method")
    assert table.loc["cca", "gamma"] == 0.3  # given, over the quick preset's default
    code, _, err = _run([*base, "--overwrite", "--methods", "weight", "--option", "cca.gamma=0.3"])
    assert code == 2 and "names the method 'cca', which is not among --methods" in err


def test_merge_options_go_to_each_method_by_name():
    """``METHOD.NAME=VALUE`` reaches one method, ``NAME=VALUE`` every method that takes it;
    the quick presets stay per method (STE's and NP Merge's ``steps`` differ)."""
    from workbench.cli.commands import merge_options

    groups = merge_options(["ste", "np_merge", "weight"], True, ["np_merge.steps=7"])
    assert groups["np_merge"]["steps"] == 7 and groups["ste"]["steps"] != 7
    assert "weight" not in groups  # nothing to set
    both = merge_options(["ste", "np_merge"], False, ["steps=3", "ste.lr=0.1"])
    assert both == {"ste": {"steps": 3, "lr": 0.1}, "np_merge": {"steps": 3}}
    with pytest.raises(ValueError, match="'gamma' is an option of \\['cca'\\]"):
        merge_options(["ste"], False, ["gamma=0.3"])
