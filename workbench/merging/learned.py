"""NP Merge (Orozco Camacho, Horoi, Wolf and Belilovsky, 2024): aligned models merged with
a coefficient learned for every entry of every parameter tensor.

The models are aligned first by any registered method, as :func:`merge_many` aligns them
(MergeMany for ``"weight"``; each model to the reference otherwise). Aligned A and B' are
merged as ``a * W_A + (1 - a) * W_B'``, ``a = sigmoid(p)``, one ``p`` per entry of every
parameter (weights, biases, BatchNorm's affine parameters), learned by Adam on the
merged network's cross-entropy on training data with the models frozen (one working copy
run by ``torch.func.functional_call``), from the plain average. N models are merged
successively as in the paper (``scheme="successive"``: 0 with 1, that merge with 2, ...);
at step k the merge of k models meets model k at ``a = k / (k + 1)`` (``p = log k``), so
every model starts with the share 1 / N. ``scheme="joint"`` learns softmax weights over
the N models per entry instead.

BatchNorm statistics are not learned. With ``bn="reset"`` (``batch_statistics`` set)
BatchNorm runs in train mode while learning, on each batch's statistics, which RESET
measures for the merged weights afterwards; with ``bn="none"`` it runs in eval mode (the
model learned is the model returned). REPAIR has no targets here and is refused.

Every ``eval_every`` steps the loss on a validation split of the training data (never the
test set) is measured the same way; the coefficients with the lowest, the start included,
are kept, and learning stops after ``patience`` evaluations without improvement. The
default learning rate was chosen on such a split, and the steps from its validation curves
(``benchmarks/np_merge.py``).

Departures from the paper: all N models are aligned once, up front, into one neuron order
(the joint softmax needs one); RESET measures the statistics after learning; early
stopping and the learning-rate choice use a split held out of the training data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from workbench.alignment.registry import get_method
from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike, train_val_split
from workbench.evaluation import check_fits, evaluate
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merging.learned_summary import per_layer
from workbench.merging.pipeline import (
    MergeReport,
    MergeResult,
    align_all,
    check_data_arguments,
    check_inputs,
    validation_split,
)
from workbench.merging.renorm import check_bn, get_bn
from workbench.merging.weights import average
from workbench.modules import model_device
from workbench.tuning import grid_points, validation_search
from workbench.validation import check_choice, check_int, check_labels, check_number

__all__ = ["SCHEMES", "learn_merge"]

SCHEMES = ("successive", "joint")


@dataclass(frozen=True)
class _Settings:
    steps: int
    lr: float
    batch_size: int
    eval_every: int
    patience: int | None
    eval_batch_size: int
    batch_statistics: bool
    seed: int
    progress: bool


class _Mixture:
    """The logits of one learning problem over ``sources`` (state dicts of parameters),
    and the parameters they give: two sources mixed by ``sigmoid`` (``a`` on the first),
    or N by ``softmax`` over the sources (``joint``)."""

    def __init__(self, sources: Sequence[dict[str, torch.Tensor]], first: float, joint: bool):
        self.joint = joint
        names = list(sources[0])
        self.stacked = {n: torch.stack([s[n].detach() for s in sources]) for n in names}
        shape = (lambda t: t.shape) if joint else (lambda t: t.shape[1:])
        start = 0.0 if joint else math.log(first / (1.0 - first))
        self.logits = {
            n: torch.full(shape(t), start, device=t.device, requires_grad=True)
            for n, t in self.stacked.items()
        }

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``a`` per entry (the first source's share), or the softmax weights (N, ...)."""
        if self.joint:
            return {n: torch.softmax(p, dim=0) for n, p in self.logits.items()}
        return {n: torch.sigmoid(p) for n, p in self.logits.items()}

    def parameters(self) -> dict[str, torch.Tensor]:
        found = {}
        for name, weights in self.coefficients().items():
            s = self.stacked[name]
            found[name] = (
                (weights * s).sum(0) if self.joint else weights * s[0] + (1 - weights) * s[1]
            )
        return found


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def _set_mode(working: nn.Module, batch_statistics: bool) -> None:
    """Eval mode (no dropout), BatchNorm on batch statistics when RESET follows."""
    working.eval()
    if batch_statistics:
        for module in working.modules():
            if isinstance(module, _BatchNorm):
                module.train()


def _validate(working, params, val: DataLike, s: _Settings) -> tuple[float, float]:
    device = model_device(working)
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for inputs, labels in batches(val, s.eval_batch_size):
            if s.batch_statistics and len(inputs) < 2:  # train-mode BatchNorm needs two
                continue
            logits = functional_call(working, params, (inputs.to(device),))
            labels = check_labels(labels, logits.shape[1], "validation data", len(logits))
            labels = labels.to(device)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    if count == 0:
        raise ValueError("The validation split yielded no usable batch; give more data.")
    return loss_sum / count, correct / count


def _learn(working, mixture: _Mixture, learn, val, s: _Settings, desc: str):
    """Adam on the mixture's logits with early stopping on validation loss; leaves the
    best logits in ``mixture``. Returns the validation curve and the best step."""
    optimizer = torch.optim.Adam(list(mixture.logits.values()), lr=s.lr)
    generator = torch.Generator().manual_seed(s.seed)
    device = model_device(working)

    def checkpoint(step: int) -> dict[str, float]:
        loss, accuracy = _validate(working, mixture.parameters(), val, s)
        return {"step": step, "loss": loss, "accuracy": accuracy}

    curve = [checkpoint(0)]
    best = {n: p.detach().clone() for n, p in mixture.logits.items()}
    best_step, best_loss, waited, step = 0, curve[0]["loss"], 0, 0
    with tqdm(total=s.steps, desc=desc, disable=not s.progress, leave=False) as bar:
        while step < s.steps and (s.patience is None or waited < s.patience):
            used = 0
            for inputs, labels in batches(learn, s.batch_size, shuffle=True, generator=generator):
                if s.batch_statistics and len(inputs) < 2:  # train-mode BatchNorm needs two
                    continue
                used += 1
                logits = functional_call(working, mixture.parameters(), (inputs.to(device),))
                labels = check_labels(labels, logits.shape[1], "training data", len(logits))
                loss = F.cross_entropy(logits, labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update()
                if step % s.eval_every == 0 or step == s.steps:
                    curve.append(checkpoint(step))
                    if curve[-1]["loss"] < best_loss:
                        best = {n: p.detach().clone() for n, p in mixture.logits.items()}
                        best_step, best_loss, waited = step, curve[-1]["loss"], 0
                    else:
                        waited += 1
                if step >= s.steps or (s.patience is not None and waited >= s.patience):
                    break
            if used == 0:
                raise ValueError("The training data yielded no usable batch; give more data.")
    with torch.no_grad():
        for name, logits in mixture.logits.items():
            logits.copy_(best[name])
    return curve, best_step


def _problems(aligned: Sequence[nn.Module], scheme: str):
    """The learning problems: ``(label, k, first, sources(current))``, ``current`` being
    the merge so far, ``k`` the last model the problem reaches, ``first`` the first
    source's starting share."""
    if scheme == "joint":
        every = [_parameters(m) for m in aligned]
        return [("joint", len(aligned) - 1, 1.0 / len(aligned), lambda _current: every)]
    return [
        (
            f"0..{k - 1}+{k}" if k > 1 else "0+1",
            k,
            k / (k + 1),
            lambda current, k=k: [current, _parameters(aligned[k])],
        )
        for k in range(1, len(aligned))
    ]


def _learn_all_(merged: nn.Module, aligned, scheme: str, learn, val, s: _Settings):
    """Every learning problem in turn; the learned parameters written into ``merged`` (the
    plain average, left as it is when every problem kept its start). Returns the curves,
    coefficient summaries and best steps."""
    curves, coefficients, best_steps = {}, {}, {}
    current = _parameters(aligned[0])
    for label, k, first, sources in _problems(aligned, scheme):
        working = average(aligned[: k + 1])  # BatchNorm statistics: the plain average
        _set_mode(working, s.batch_statistics)
        mixture = _Mixture(sources(current), first, scheme == "joint")
        curves[label], best_steps[label] = _learn(
            working, mixture, learn, val, s, f"NP Merge {label}"
        )
        if scheme == "joint":
            for i in range(len(aligned)):
                coefficients[f"model {i}"] = per_layer(mixture.coefficients(), first, i)
        else:
            coefficients[label] = per_layer(mixture.coefficients(), first)
        with torch.no_grad():
            current = {n: p.detach() for n, p in mixture.parameters().items()}
    if any(best_steps.values()):
        with torch.no_grad():
            for name, parameter in merged.named_parameters():
                parameter.copy_(current[name])
    return curves, coefficients, best_steps


def learn_merge(
    models: Sequence[nn.Module],
    data: DataLike,
    align: str = "weight",
    *,
    align_options: Mapping[str, Any] | None = None,
    bn: str | None = "reset",
    scheme: str = "successive",
    steps: int = 100,
    lr: float = 0.03,
    batch_size: int = 64,
    data_fraction: float = 1.0,
    eval_every: int = 10,
    patience: int | None = 5,
    reference: int | str = 0,
    val_data: DataLike | None = None,
    val_fraction: float = 0.1,
    spec: PermutationSpec | None = None,
    eval_batch_size: int | None = None,
    max_batches: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> MergeResult:
    """NP Merge of ``models`` (N >= 2; see the module docstring), the work behind the
    registered ``"np_merge"`` (:func:`~workbench.merging.learned_method.np_merge` and
    ``merge_many(models, data, "np_merge")`` run it): ``result.model`` and
    ``result.report`` (the chosen hyperparameters, the validation curve of every learning
    problem in ``report.curves``, per-layer quantiles of the learned coefficients in
    ``report.coefficients``, seconds).

    ``align``: any registered alignment method, with its ``align_options`` (a hyperparameter
    it searches, CCA's ``gamma``, is chosen on the validation split by the plain
    average's accuracy, as :func:`merge_many` does). ``scheme``: ``"successive"``
    pairwise merges (``steps`` Adam steps each) or one ``"joint"`` softmax over the N
    models (``steps`` steps). ``lr``: Adam's learning rate on the logits; ``batch_size``:
    examples per step; ``data_fraction``: the stratified share of the training part that
    the coefficients learn on; ``eval_every``, ``patience``: early stopping (``None``:
    never stop early). The validation split is ``val_data`` or a ``val_fraction`` of
    ``data``, held out of everything else (alignment, learning, RESET). With ``steps=0``
    nothing is learned and no split is made: the result is ``merge_many(models, data,
    align, bn=bn)`` exactly. ``eval_batch_size``, ``max_batches``: the passes that learn
    nothing (statistics, validation, RESET; ``None``: fitted to a memory budget). Inputs
    are not modified.
    """
    started = time.perf_counter()
    models = list(models)
    options = dict(align_options or {})
    handling = get_bn(check_bn(bn, no_endpoints="learned per-entry coefficients have none"))
    found = get_method(align)
    bn = check_inputs(models, bn, options, found.name)
    check_choice("scheme", scheme, SCHEMES)
    if eval_batch_size is not None:
        check_int("eval_batch_size", eval_batch_size, minimum=1)
    s = _Settings(
        steps=check_int("steps", steps, minimum=0),
        lr=check_number("lr", lr, low=0.0),
        batch_size=check_int("batch_size", batch_size, minimum=1),
        eval_every=check_int("eval_every", eval_every, minimum=1),
        patience=None if patience is None else check_int("patience", patience, minimum=1),
        eval_batch_size=choose_batch_size(models, data, batch_size=eval_batch_size),
        batch_statistics=handling.batch_statistics,
        seed=check_int("seed", seed),
        progress=bool(progress),
    )
    check_number("data_fraction", data_fraction, low=0.0, high=1.0, low_inclusive=False)
    check_data_arguments(models[0], data, val_data, val_fraction, max_batches)
    check_fits(models[0], data, "training data")  # its labels, all of them, before any step
    points = grid_points(found.search_space(options))
    fit = data
    if s.steps > 0 or len(points) > 1 or reference == "best":
        if isinstance(data, DataLoader) and val_data is None:
            raise ValueError(
                "NP Merge stops early on a validation split, and a DataLoader cannot be "
                "split: pass val_data= (held-out training data, never the test set)."
            )
        fit, val_data = validation_split(data, val_data, val_fraction)
    if reference == "best":
        accuracies = [
            evaluate(m, eval_data=val_data, batch_size=eval_batch_size).accuracy for m in models
        ]
        reference = max(range(len(models)), key=accuracies.__getitem__)
    reference = check_int("reference", reference, 0, len(models) - 1)
    spec = resolve_spec(models[reference], spec, data=fit)
    common = {"seed": seed, "batch_size": eval_batch_size, "max_batches": max_batches}
    common = {**common, "progress": progress, **options}
    statistics: dict = {}

    def fixed(model: nn.Module) -> nn.Module:
        """``model``, a merge of its own, corrected in place by the BatchNorm handling."""
        passes = {"spec": spec, "batch_size": eval_batch_size, "max_batches": max_batches}
        correct = handling.correction([model], fit, **passes)
        if correct is not None:
            correct(model, [1.0])
        return model

    def aligned_for(point: dict[str, Any]) -> list[nn.Module]:
        return align_all(models, reference, found, fit, spec, {**common, **point}, statistics)

    scores: dict[str, float] = {}
    if len(points) > 1:  # the alignment's own hyperparameters, on the plain average
        search = validation_search(
            lambda p: fixed(average(aligned_for(p))),
            points,
            val_data,
            batch_size=eval_batch_size,
            progress=progress,
            desc=f"{found.name}: alignment",
        )
        points, scores = [search.point], {f"{found.name} {k}": v for k, v in search.scores.items()}
    aligned = aligned_for(points[0])
    merged = average(aligned)
    learn = fit
    if s.steps > 0 and data_fraction < 1.0:
        if not isinstance(fit, Dataset):
            raise ValueError("data_fraction < 1 needs a Dataset; a DataLoader cannot be split.")
        learn, _ = train_val_split(fit, 1.0 - data_fraction, seed)
    curves, coefficients, best_steps = {}, {}, {}
    if s.steps > 0:
        curves, coefficients, best_steps = _learn_all_(merged, aligned, scheme, learn, val_data, s)
    merged = fixed(merged)
    if s.steps > 0:
        scores["np_merge"] = evaluate(
            merged, eval_data=val_data, batch_size=eval_batch_size
        ).accuracy
    hyperparameters = {
        "merge": "learned",
        "scheme": scheme,
        **{k: getattr(s, k) for k in ("steps", "lr", "batch_size", "eval_every", "patience")},
        "data_fraction": float(data_fraction),
        "best_steps": best_steps,
        "steps_run": {label: curve[-1]["step"] for label, curve in curves.items()},
        **points[0],
    }
    report = MergeReport(
        found.name,
        len(models),
        reference,
        bn,
        gamma=points[0].get("gamma"),
        validation=scores,
        seconds=time.perf_counter() - started,
        hyperparameters=hyperparameters,
        merge="learned",
        curves=curves,
        coefficients=coefficients,
    )
    return MergeResult(merged, report)
