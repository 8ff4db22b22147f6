"""Learning the permutation with a straight-through estimator (Ainsworth et al., Git
Re-Basin, 2023, Section 3.3 and Algorithm 3).

Weight matching and activation matching pick the permutation of B by a proxy (weights or
activations that agree); the straight-through estimator (STE) picks it by the quantity
that matters, the loss of the midpoint ``(A + P(B)) / 2``. A float copy ``theta`` of the
weights is optimized; every step projects it onto the nearest permutation of B, ``P =
argmax_P <theta, P(B)>`` (weight matching with ``theta`` in A's place, started from the
previous step's ``P``), and evaluates the midpoint with the projected weights, while the
gradient of the loss flows to ``theta`` as if the projection were the identity
(``P(B) + theta - stop_gradient(theta)``). ``theta`` starts at A's weights, as in the
paper, so the first projection is weight matching's permutation.

What this implementation chooses where the paper leaves it open:

* **BatchNorm**: the midpoint is evaluated with batch statistics (its BatchNorm layers in
  train mode, every other module in eval mode, running statistics untouched). The
  averaged running statistics of A and P(B) do not describe the midpoint (the variance
  collapse that RESET repairs), and a loss computed with them would steer the
  permutation towards the wrong goal; batch statistics are the midpoint's own, which is
  what RESET installs before a merged model is used (``bn="reset"``).
* **which permutation is returned**: a held-out ``val_fraction`` of ``data`` (stratified,
  :func:`~workbench.data.train_val_split`) scores the midpoint of every permutation the
  projection visits, the first one (weight matching's) included; the best is returned,
  not the last, so a run that wanders off never ends worse (there) than where it
  started. The authors' code keeps the permutation with the lowest loss on the batch
  it just stepped on, which rewards a lucky batch.
* **defaults**: ``steps=25``, ``lr=3e-3`` (Adam), ``batch_size=500`` (the paper's batch),
  chosen by the validation barrier on two pairs of the shipped mnist-5k models, 10% of
  the training split held out (``benchmarks/ste.py``; the paper's ``lr=1e-3`` was no
  better there). On the test set, with RESET, STE's barrier is below weight matching's
  on all six pairs of the shipped models (mean 0.026 against 0.036), in about 40 s per
  pair on one CPU thread.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from workbench.alignment.registry import register_method
from workbench.alignment.weight import weight_matching
from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike, train_val_split
from workbench.evaluation import check_fits
from workbench.figures import PALETTE
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import Permutation, permute_state
from workbench.modules import model_device
from workbench.validation import (
    check_int,
    check_labels,
    check_logits,
    check_models,
    check_number,
)
from workbench.vocabulary import keyword_only

__all__ = ["ste_matching"]

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
# The defaults, chosen on a validation split of mnist-5k (module docstring).
STEPS, LR, BATCH_SIZE = 25, 3e-3, 500


def _split(data: DataLike, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(fit, held_out)``: the examples STE steps on, and those that pick its result."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "ste_matching draws seeded random batches and holds out part of the data, which "
            "a stream cannot give: pass a map-style Dataset (one with __len__ and "
            "__getitem__), e.g. TensorDataset(images, labels)."
        )
    _, labels = next(iter(batches(dataset, 2, max_batches=1)))
    if labels is None:
        raise ValueError(
            "ste_matching minimizes the midpoint's cross-entropy, so the data needs labels: "
            "yield (inputs, labels) pairs, e.g. TensorDataset(images, labels)."
        )
    # train_val_split refuses a class of one example or a part smaller than the classes
    return train_val_split(dataset, val_fraction, seed)


def _midpoint_mode(module: nn.Module) -> nn.Module:
    """``module`` in eval mode but for its BatchNorm layers, which use batch statistics."""
    module.eval()
    for layer in module.modules():
        if isinstance(layer, _BATCHNORM):
            layer.train()
    return module


class _Midpoint:
    """The loss of ``(A + P(B)) / 2`` on a batch, differentiable in ``theta`` (the
    parameters of ``work``) through the straight-through estimator."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, work: nn.Module, spec) -> None:
        self.work, self.spec = work, spec
        self.device = model_device(work)
        self.names = [name for name, _ in work.named_parameters()]
        self.a = {k: v.detach().to(self.device) for k, v in model_a.named_parameters()}
        self.b_state = {k: v.detach().to(self.device) for k, v in model_b.state_dict().items()}
        # Batch statistics: running statistics are never read, and updates land on copies.
        self.buffers = {k: v.detach().clone() for k, v in work.named_buffers()}
        self.projected: dict[str, torch.Tensor] = {}

    def project(self, perm: Permutation) -> None:
        permuted = permute_state(self.b_state, self.spec, perm)
        self.projected = {name: permuted[name] for name in self.names}

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None, ste: bool) -> torch.Tensor:
        theta = dict(self.work.named_parameters())
        mid = {}
        for name in self.names:
            b = self.projected[name]
            if ste:  # forward: P(B); backward: the identity into theta
                b = b + (theta[name] - theta[name].detach())
            mid[name] = 0.5 * (self.a[name] + b)
        inputs = inputs.to(self.device)
        logits = check_logits(
            functional_call(self.work, {**mid, **self.buffers}, (inputs,)), self.work
        )
        labels = check_labels(labels, logits.shape[1], "data", len(logits)).to(self.device)
        return F.cross_entropy(logits.float(), labels)

    @torch.no_grad()
    def held_out_loss(self, data: Dataset, batch_size: int) -> float:
        total, count = 0.0, 0
        for inputs, labels in batches(data, batch_size):
            total += self.loss(inputs, labels, ste=False).item() * len(inputs)
            count += len(inputs)
        return total / count


def _trajectory(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec,
    fit: Dataset,
    held_out: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool,
) -> Iterator[tuple[int, Permutation, float]]:
    """``(step, best permutation so far, its held-out midpoint loss)`` at step 0 (weight
    matching's projection of A) and after each of ``steps`` steps: a run of ``n`` steps
    returns what a longer run with the same seed yields at step ``n``."""
    work = _midpoint_mode(copy.deepcopy(model_a))  # its parameters are theta, from A
    for parameter in work.parameters():
        parameter.grad = None
        parameter.requires_grad_(True)
    midpoint = _Midpoint(model_a, model_b, work, spec)
    optimizer = torch.optim.Adam(work.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    perm = weight_matching(work, model_b, spec=spec, seed=seed)
    midpoint.project(perm)
    best, best_loss = perm, midpoint.held_out_loss(held_out, batch_size)
    yield 0, best, best_loss
    full_batches = len(fit) >= batch_size  # then a short last batch is skipped (batch statistics)
    bar = tqdm(total=steps, desc="STE", disable=not progress, leave=False)
    step = 0
    while step < steps:
        for inputs, labels in batches(fit, batch_size, shuffle=True, generator=generator):
            if step == steps:
                break
            if full_batches and len(inputs) < batch_size:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = midpoint.loss(inputs, labels, ste=True)
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(
                    f"The midpoint's loss became {loss.item()} at step {step}: lower lr "
                    f"(got {lr:g})."
                )
            loss.backward()
            optimizer.step()
            step += 1
            new = weight_matching(work, model_b, spec=spec, init=perm, seed=seed)
            if any(not torch.equal(new[g], perm[g]) for g in perm):
                perm = new
                midpoint.project(perm)
                held = midpoint.held_out_loss(held_out, batch_size)
                if held < best_loss:
                    best, best_loss = perm, held
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{best_loss:.4f}")
            yield step, best, best_loss
    bar.close()


@register_method(
    "ste",
    needs_data=True,
    preserves_function=True,
    defaults={"steps": STEPS, "lr": LR, "batch_size": BATCH_SIZE},
    quick={"steps": 10},
    color=PALETTE["sky"],
    marker="P",
)
@keyword_only(("data", "spec"))
def ste_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    spec: PermutationSpec | None = None,
    steps: int = STEPS,
    lr: float = LR,
    batch_size: int | None = BATCH_SIZE,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> Permutation:
    """The permutation of ``model_b``'s channels whose midpoint with ``model_a`` has the
    lowest loss, learned with the straight-through estimator (module docstring).

    ``steps`` Adam steps (learning rate ``lr``) on seeded random batches of
    ``batch_size`` labelled examples of ``data`` (training data: a Dataset, or a
    DataLoader whose dataset is used; ``batch_size=None``: the paper's 500, fewer where
    :func:`~workbench.batching.choose_batch_size`'s memory budget needs it); a
    stratified ``val_fraction`` of it is held out and picks, among the permutations
    visited, the one whose midpoint loss is lowest there (weight matching's, the first,
    included). ``spec`` defaults to
    ``permutation_spec(model_a, <a batch of data>)``. Deterministic for a given ``seed``;
    neither model is modified.
    """
    check_models([model_a, model_b])
    if data is None:
        raise ValueError(
            "ste_matching needs data: labelled training examples (a Dataset or DataLoader) "
            "on which the midpoint's loss is minimized."
        )
    check_fits(model_a, data, "data")  # labels: all of them, before the first step
    steps = check_int("steps", steps, minimum=1)
    lr = check_number("lr", lr, low=0.0, low_inclusive=False)
    if batch_size is None:  # merge_many's "a pass's own choice": the paper's, if it fits
        batch_size = min(BATCH_SIZE, choose_batch_size([model_a, model_b], data))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    val_fraction = check_number("val_fraction", val_fraction, low=0.0, low_inclusive=False)
    if val_fraction >= 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction:g}.")
    seed = check_int("seed", seed)
    spec = resolve_spec(model_a, spec, data=data)
    spec.check_model(model_a, "model_a")
    spec.check_model(model_b, "model_b")
    fit, held_out = _split(data, val_fraction, seed)
    run = _trajectory(
        model_a,
        model_b,
        spec,
        fit,
        held_out,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    _, best, _ = deque(run, maxlen=1)[0]  # the last yield: the best after all steps
    return {name: p.cpu() for name, p in best.items()}
