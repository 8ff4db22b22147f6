"""Small helpers on ``nn.Module`` that every floor of the workbench shares: where a model
runs, eval mode for a block, whether models share an architecture (the state-dict diff),
and writing a weighted combination of state dicts into a model.

Nothing here knows about alignment or merging; those rooms build on these helpers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "StateDiff",
    "check_compatible",
    "clone",
    "default_device",
    "eval_mode",
    "has_batchnorm",
    "load_weighted_average_",
    "model_device",
    "select_output",
    "state_diff",
    "state_shapes",
    "tied_keys",
]


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode: the start of every model the workbench
    returns (aligned, merged, interpolated, renormalized), so that calling a result uses
    the BatchNorm statistics its report describes, whatever mode its inputs were in (a
    model straight out of training is in train mode)."""
    return copy.deepcopy(model).eval()


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (``cpu`` for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's previous mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


class SelectOutput(nn.Module):
    """``model`` whose forward returns one entry of the wrapped model's output (a tuple,
    list, dict or named tuple): see :func:`select_output`."""

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)[self.key]

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


def select_output(model: nn.Module, key: int | str = 0) -> nn.Module:
    """A module that computes ``model(x)[key]``: the documented way to use a model whose
    forward returns a tuple or dict (logits plus auxiliary outputs, say) with the
    workbench, which needs class scores. ``model`` is shared, not copied; its state-dict
    keys gain the prefix ``model.``."""
    return SelectOutput(model, key)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains BatchNorm layers (whose statistics RESET recomputes)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def state_shapes(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """State-dict key -> shape of a model or a state dict."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


@dataclass(frozen=True)
class StateDiff:
    """How one set of state-dict shapes differs from an expected one."""

    missing: list[str]
    unexpected: list[str]
    wrong_shapes: list[tuple[str, tuple, tuple]]  # key, found, expected

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shapes)

    def describe(self, found: str = "found", expected: str = "expected", limit: int = 3) -> str:
        """One line naming the first ``limit`` differences of each kind."""

        def first(items: list) -> str:
            return ", ".join(map(str, items[:limit])) + (" ..." if len(items) > limit else "")

        parts = []
        if self.missing:
            parts.append(f"missing {first(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {first(self.unexpected)}")
        if self.wrong_shapes:
            shapes = [f"{k}: {found} {a} vs {expected} {b}" for k, a, b in self.wrong_shapes]
            parts.append(f"wrong shapes ({first(shapes)})")
        return "; ".join(parts)


def state_diff(found: Mapping[str, tuple], expected: Mapping[str, tuple]) -> StateDiff:
    """The keys of ``expected`` missing from ``found``, the keys ``found`` has in excess,
    and the keys whose shapes differ (both arguments map keys to shapes)."""
    return StateDiff(
        sorted(set(expected) - set(found)),
        sorted(set(found) - set(expected)),
        [
            (key, tuple(found[key]), tuple(shape))
            for key, shape in expected.items()
            if key in found and tuple(found[key]) != tuple(shape)
        ],
    )


def check_compatible(models: Sequence[nn.Module]) -> None:
    """Raise ``ValueError`` unless all models have the same state-dict keys and shapes."""
    if len(models) < 1:
        raise ValueError("Need at least one model.")
    reference = state_shapes(models[0])
    for index, model in enumerate(models[1:], start=1):
        diff = state_diff(state_shapes(model), reference)
        if diff.missing or diff.unexpected:
            raise ValueError(
                f"Model {index} ({type(model).__name__}) has a different architecture from "
                f"model 0 ({type(models[0]).__name__}): keys only in model 0: "
                f"{diff.missing[:3]}, only in model {index}: {diff.unexpected[:3]}."
            )
        if diff.wrong_shapes:
            key, found, expected = diff.wrong_shapes[0]
            raise ValueError(
                f"Model {index} has {key} of shape {found} but model 0 has {expected}: the "
                "models differ in width or number of classes."
            )


def load_weighted_average_(
    target: nn.Module, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> nn.Module:
    """Overwrite ``target``'s floating-point parameters and buffers with
    ``sum_i weights[i] * states[i]``; integer buffers (BatchNorm's batch counter) come from
    ``states[0]``. Works in place and returns ``target``."""
    with torch.no_grad():
        for key, out in target.state_dict().items():
            if out.is_floating_point():
                out.copy_(states[0][key]).mul_(weights[0])
                for state, weight in zip(states[1:], weights[1:], strict=True):
                    out.add_(state[key].to(out.device), alpha=weight)
            else:
                out.copy_(states[0][key])
    return target


def tied_keys(model: nn.Module) -> list[list[str]]:
    """The state-dict names that share one tensor (tied weights), as lists of two or more."""
    names: dict[int, list[str]] = {}
    for key, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        names.setdefault(id(tensor), []).append(key)
    return [keys for keys in names.values() if len(keys) > 1]
