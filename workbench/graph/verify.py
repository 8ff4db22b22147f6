"""Self-verification: a spec checks on the model itself that it preserves the function.

The rules of :mod:`workbench.graph.rules` are written to be safe, but a model may combine
ops in ways no rule foresaw (a frozen layer whose neighbours were permuted, a tied
parameter, a gate over channels). So before :func:`~workbench.graph.permutation_spec`
returns, the spec is tried: on a private float32 copy of the model whose per-channel
quantities are randomized (BatchNorm statistics and affine parameters, biases, and any
parameter whose entries are all equal: in a freshly initialized model those make channels
interchangeable, and a wrong permutation of them would go unseen), one random permutation
of every group must leave the outputs on the example input, and on a random input of its
shape, unchanged up to a relative L2 error of ``rtol`` (1e-4 by default: float32 sums in
another order differ by about 1e-7 to 1e-6 on deep networks, a wrong permutation by
1e-2 and more; CPUs convolve depthwise and grouped filters in float64 up to a hundred
times slower). Where that check fails, float32's own rounding is measured first (every
weight moved by about one unit in its last place): a deep network with random weights can
amplify it to 1e-3, and then the whole check is done in float64 instead, so that rounding
never freezes a group. If it still fails, bisection over the groups
finds the ones that break it; they are frozen ("failed verification") and the rest is
checked again, until what remains is exact. A spec can therefore never break a model on
its example input.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from workbench.graph.spec import PermutationSpec
from workbench.graph.transforms import block_permutation, permute_state
from workbench.modules import eval_mode

__all__ = ["randomized_copy", "verify_spec"]

DEFAULT_RTOL = 1e-4


def randomized_copy(
    model: nn.Module, seed: int = 0, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A copy of ``model`` in ``dtype`` whose per-channel quantities differ from channel to
    channel, near their usual values so that deep networks keep outputs of order one."""
    generator = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model).to(dtype).eval()

    def noise(like: torch.Tensor, scale: float) -> torch.Tensor:
        u = torch.rand(like.shape, generator=generator, dtype=torch.float64)
        return (scale * (u - 0.5)).to(like.dtype).to(like.device)

    with torch.no_grad():
        for module in work.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if module.running_mean is not None:
                    module.running_mean.copy_(noise(module.running_mean, 0.4))
                    module.running_var.copy_(1.0 + noise(module.running_var, 0.4))
                if module.affine:
                    module.weight.copy_(1.0 + noise(module.weight, 0.4))
                    module.bias.copy_(noise(module.bias, 0.4))
        for tensor in [*work.parameters(), *work.buffers()]:
            if (
                tensor.is_floating_point()
                and tensor.numel() > 1
                and bool((tensor == tensor.flatten()[0]).all())
            ):
                center = float(tensor.flatten()[0])
                spread = 0.4 * abs(center) if center != 0 else 0.2
                tensor.add_(noise(tensor, spread))
    return work


def _flat_output(output: Any) -> torch.Tensor:
    """Every tensor of a model's output (a tensor, tuple, list, dict or named tuple) as one
    flat float64 vector."""
    tensors: list[torch.Tensor] = []

    def collect(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors.append(value.detach().double().reshape(-1))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                collect(item)

    collect(output)
    if not tensors:
        raise ValueError(f"The model's output holds no tensor ({type(output).__name__}).")
    return torch.cat(tensors)


def _inputs(example_input: Any, dtype: torch.dtype, seed: int) -> tuple:
    """The example input and a random input of its shape, batched together, in ``dtype``
    (integer inputs are used as they are)."""
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            x = torch.cat([x.to(dtype), noise.to(dtype).to(x.device)])
        out.append(x)
    return tuple(out)


def verify_spec(
    model: nn.Module,
    spec: PermutationSpec,
    example_input: Any,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> PermutationSpec:
    """``spec`` checked on ``model`` (see the module docstring), with the groups that fail
    frozen and reported; the result records what was checked in ``spec.verification``."""
    started = time.perf_counter()
    check = _Check(model, spec, example_input, seed, torch.float32)
    worst = check.error(list(spec.groups)) if spec.groups else 0.0
    noise = None
    if worst > rtol:
        noise = check.noise_floor()
        if noise > rtol / 10:  # float32 cannot tell a right permutation from a wrong one here
            passes = check.passes
            check = _Check(model, spec, example_input, seed, torch.float64)
            check.passes += passes
            worst = check.error(list(spec.groups))
    failed: list[str] = []
    groups = list(spec.groups)
    while worst > rtol:
        found = _offenders(groups, lambda g: check.error(g) > rtol)
        failed += found
        groups = [g for g in groups if g not in found]
        worst = check.error(groups) if groups else 0.0
    verified = _without(spec, failed, model)
    verified.verification = {
        "relative_error": worst,
        "rtol": rtol,
        "dtype": str(check.dtype).removeprefix("torch."),
        "float32_noise": noise,
        "failed_groups": failed,
        "forward_passes": check.passes,
        "seconds": time.perf_counter() - started,
    }
    return verified


class _Check:
    """The randomized copy of a model in ``dtype``, its outputs on the check's inputs, and
    the relative error that permuting some groups causes."""

    def __init__(
        self,
        model: nn.Module,
        spec: PermutationSpec,
        example_input: Any,
        seed: int,
        dtype: torch.dtype,
    ) -> None:
        self.dtype, self.spec, self.passes = dtype, spec, 0
        self.work = randomized_copy(model, seed, dtype)
        self.inputs = _inputs(example_input, dtype, seed)
        self.scratch = copy.deepcopy(self.work)  # permuted states are loaded here, one at a time
        self.state = self.work.state_dict()
        self.perm = _derangement(spec, seed)
        self.seed = seed
        self.expected = self.run(None)
        if not bool(torch.isfinite(self.expected).all()):
            raise ValueError(
                f"{type(model).__name__}'s outputs on the example input are not finite (with "
                "its per-channel statistics randomized for the check), so the spec cannot be "
                "verified; pass an example input the model handles, or verify=False."
            )
        self.norm = float(torch.linalg.vector_norm(self.expected)) or 1.0

    def run(self, state: dict[str, torch.Tensor] | None) -> torch.Tensor:
        self.passes += 1
        target = self.work
        if state is not None:
            self.scratch.load_state_dict(state)
            target = self.scratch
        with eval_mode(target), torch.no_grad():
            return _flat_output(target(*self.inputs))

    def relative(self, got: torch.Tensor) -> float:
        error = float(torch.linalg.vector_norm(got - self.expected)) / self.norm
        return error if math.isfinite(error) else math.inf  # a blow-up is a failure

    def error(self, groups: Sequence[str]) -> float:
        part = {name: self.perm[name] for name in groups}
        return self.relative(
            self.run(permute_state(self.state, _restricted(self.spec, groups), part))
        )

    def noise_floor(self) -> float:
        """How far the outputs move when every floating-point entry of the state moves by
        about one unit in its last place: the error that rounding alone can cause, which a
        correct permutation (the same sums in another order) may show too. Deep networks
        with random weights can amplify it past ``rtol`` in float32."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        eps = torch.finfo(self.dtype).eps
        moved = {}
        for key, value in self.state.items():
            if value.is_floating_point():
                u = torch.rand(value.shape, generator=generator, dtype=torch.float64) * 2 - 1
                value = value * (1 + eps * u).to(value.dtype).to(value.device)
            moved[key] = value
        return self.relative(self.run(moved))


def _derangement(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    """A random permutation of every group (within its blocks) that moves at least one
    channel of each block: a random one may leave a small block as it is, and then tests
    nothing about it."""
    generator = torch.Generator().manual_seed(seed)
    perm = {}
    for name, group in spec.groups.items():
        local = []
        for _ in range(group.blocks):
            p = torch.randperm(group.block_size, generator=generator)
            local.append(p.roll(1) if torch.equal(p, torch.arange(group.block_size)) else p)
        perm[name] = block_permutation(torch.stack(local))
    return perm


def _restricted(spec: PermutationSpec, groups: Sequence[str]) -> PermutationSpec:
    return PermutationSpec(
        {name: spec.groups[name] for name in groups}, [], spec.state_shapes, spec.layers
    )


def _offenders(groups: list[str], fails: Callable[[list[str]], bool]) -> list[str]:
    """The groups whose permutation breaks the model, by bisection (``fails(groups)`` is
    known to be true). If neither half fails alone, the failure needs both together and
    all of ``groups`` are returned."""
    if len(groups) == 1:
        return groups
    half = len(groups) // 2
    first, second = groups[:half], groups[half:]
    found = (_offenders(first, fails) if fails(first) else []) + (
        _offenders(second, fails) if fails(second) else []
    )
    return found or groups


def _without(spec: PermutationSpec, failed: Sequence[str], model: nn.Module) -> PermutationSpec:
    """A copy of ``spec`` without the ``failed`` groups, each reported with its cost."""
    report = list(spec.report)
    for name in failed:
        group = spec.groups[name]
        joined = f" (with {', '.join(group.producers[1:])})" if len(group.producers) > 1 else ""
        report.append(
            f"{name}{joined}: failed verification: permuting it changes "
            f"{type(model).__name__}'s outputs ({group.size} channels)"
        )
    groups = {name: g for name, g in spec.groups.items() if name not in set(failed)}
    return PermutationSpec(groups, report, spec.state_shapes, spec.layers, spec.leaf_modules)
