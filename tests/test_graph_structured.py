"""Structured channel patterns that the graph rules permute exactly: unequal splits
(MixNet), slices and ``narrow`` (ghost modules, dual-path networks), ``stack`` with a
softmax over the branches (selective kernels), and the smaller ops they rely on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from workbench.alignment import inverse
from workbench.graph.verify import randomized_copy


def _relative_error(model: nn.Module, spec: wb.PermutationSpec, x: torch.Tensor) -> float:
    """How much one random permutation of every group changes the outputs of a copy of
    ``model`` whose per-channel quantities are randomized."""
    work = randomized_copy(model, seed=3)
    permuted = wb.apply_permutation(work, spec=spec, perm=wb.random_permutation(spec, seed=1))
    with torch.no_grad():
        expected, got = work(x), permuted(x)
    return float((got - expected).norm() / expected.norm())


def _check(model: nn.Module, x: torch.Tensor, coverage: float) -> wb.PermutationSpec:
    """The rules alone are exact and cover ``coverage``; verification then fails nothing."""
    spec = wb.permutation_spec(model, example_input=x, verify=False)
    assert _relative_error(model, spec, x) < 1e-5, spec.summary()
    assert spec.coverage() == coverage, spec.summary()
    verified = wb.permutation_spec(model, example_input=x)
    assert verified.verification["failed_groups"] == [], verified.summary()
    assert verified.coverage() == coverage
    return spec


def _recovers_a_planted_permutation(model: nn.Module, spec: wb.PermutationSpec) -> None:
    planted = wb.random_permutation(spec, seed=5)
    shuffled = wb.apply_permutation(model, spec=spec, perm=planted)
    found = wb.weight_matching(model, shuffled, spec=spec)
    expected = inverse(planted)
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[k], expected[k]) for k in found)


class MixedKernels(nn.Module):
    """MixNet-style: the channels split unequally, each piece its own conv (a full conv, a
    depthwise one, one that narrows the piece), concatenated again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 64, 1), nn.BatchNorm2d(64)
        self.a = nn.Conv2d(22, 22, 3, padding=1)
        self.b = nn.Conv2d(21, 21, 5, padding=2, groups=21)
        self.c = nn.Conv2d(21, 16, 1)
        self.bn2, self.head = nn.BatchNorm2d(59), nn.Conv2d(59, 10, 1)

    def forward(self, x):
        a, b, c = torch.split(torch.relu(self.bn(self.stem(x))), [22, 21, 21], dim=1)
        y = torch.cat([self.a(a), self.b(b), self.c(c)], 1)
        return self.head(torch.relu(self.bn2(y))).mean((2, 3))


class GhostModule(nn.Module):
    """A ghost module: half the channels from a conv, the other half a depthwise conv of
    those, concatenated and cut to ``out`` channels (odd here: the cut falls inside the
    cheap half)."""

    def __init__(self, inp: int, out: int, relu: bool = True) -> None:
        super().__init__()
        self.out, init = out, math.ceil(out / 2)
        act = nn.ReLU if relu else nn.Identity
        self.primary = nn.Sequential(
            nn.Conv2d(inp, init, 1, bias=False), nn.BatchNorm2d(init), act()
        )
        self.cheap = nn.Sequential(
            nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False),
            nn.BatchNorm2d(init),
            act(),
        )

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.out]


class Ghost(nn.Module):
    """Two ghost modules and a residual: the block's output (a group and its depthwise
    copy, concatenated) is added to the stem's single group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.g1, self.g2 = GhostModule(16, 23), GhostModule(23, 16, relu=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        s = self.stem(x)
        return self.fc((self.g2(self.g1(s)) + s).mean((2, 3)))


class DualPath(nn.Module):
    """DPN-style: a projection and the block's last conv are each cut into a residual part
    (``x[:, :c]``, added together) and a dense part (``x[:, c:]``, concatenated)."""

    def __init__(self, c: int = 16, inc: int = 8) -> None:
        super().__init__()
        self.c = c
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.proj = nn.Conv2d(24, c + inc, 1)
        self.a = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.last = nn.Conv2d(24, c + inc, 1)
        self.bn = nn.BatchNorm2d(c + 2 * inc)
        self.fc = nn.Linear(c + 2 * inc, 10)

    def forward(self, x):
        x = self.stem(x)
        s = self.proj(x)
        h = self.last(self.a(x))
        resid = s[:, : self.c] + h[:, : self.c]
        dense = torch.cat([s[:, self.c :], h[:, self.c :]], 1)
        y = torch.relu(self.bn(torch.cat([resid, dense], 1)))
        return self.fc(y.mean((2, 3)))


class Narrowed(nn.Module):
    """``x.narrow`` and ``torch.narrow`` along the channels, and slices along a spatial
    axis, which keep the channels as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.a, self.b = nn.Conv2d(5, 8, 1), nn.Conv2d(7, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        a = self.a(h.narrow(1, 0, 5))[:, :, 1:]
        b = self.b(torch.narrow(h, 1, 5, 7)[:, :, 1:, :])
        return self.fc(torch.relu(a + b).mean((2, 3)))


class SelectiveKernel(nn.Module):
    """SK block: two branches stacked on a new axis, an attention over the branches from
    their sum (gap, fc, fc to 2C viewed as (2, C), softmax over the branch axis), the
    weighted sum, and a residual."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.paths = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d), nn.BatchNorm2d(c), nn.ReLU())
            for d in (1, 2)
        )
        self.reduce = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU())
        self.select = nn.Conv2d(c // 2, 2 * c, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        s = self.stem(x)
        paths = torch.stack([p(s) for p in self.paths], dim=1)
        attn = self.select(self.reduce(paths.sum(1).mean((2, 3), keepdim=True)))
        attn = torch.softmax(attn.view(x.shape[0], 2, -1, 1, 1), dim=1)
        y = (paths * attn).sum(dim=1) + s
        return self.fc(y.mean((2, 3)))


class SplitAttention(nn.Module):
    """ResNeSt's split attention, radix 2: a grouped conv (one group per radix branch)
    whose 2C outputs are viewed as (2, C) and summed, an attention from the sum whose 2C
    logits get a softmax over the radix axis (viewed as (1, 2, C), transposed, flattened
    back to 2C), and the weighted sum of the branches."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv = nn.Conv2d(c, 2 * c, 3, padding=1, groups=2)
        self.bn0 = nn.BatchNorm2d(2 * c)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, 2 * c, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        n = x.shape[0]
        s = self.stem(x)
        y = torch.relu(self.bn0(self.conv(s)))
        c = y.shape[1] // 2
        y = y.reshape(n, 2, c, y.shape[2], y.shape[3])
        gap = y.sum(dim=1).mean((2, 3), keepdim=True)
        logits = self.fc2(torch.relu(self.fc1(gap)))
        attn = torch.softmax(logits.view(n, 1, 2, -1).transpose(1, 2), dim=1).reshape(n, -1)
        out = (y * attn.view(n, -1, 1, 1).reshape(n, 2, c, 1, 1)).sum(dim=1)
        return self.fc(out.mean((2, 3)))


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def test_unequal_split_gives_each_piece_its_slice_of_the_producer() -> None:
    torch.manual_seed(0)
    model = MixedKernels().eval()
    spec = _check(model, X, coverage=1.0)  # stem 64, a 22, b 21 (depthwise), c 16
    rows = sorted(
        (ax.offset, g.size) for g in spec.groups.values() for ax in g.axes
        if ax.key == "stem.weight"
    )  # fmt: skip
    assert rows == [(0, 22), (22, 21), (43, 21)]
    assert "stem" not in spec.groups
    _recovers_a_planted_permutation(model, spec)


def test_ghost_module_slice_and_residual_over_a_concatenation() -> None:
    torch.manual_seed(0)
    model = Ghost().eval()
    # every hidden layer moves: stem 16, g1 12 + 12 (the cut at 23 divides g1's primary
    # group into 11 + 1 channels), g2 8 + 8
    spec = _check(model, X, coverage=1.0)
    # the residual ties both halves of the stem to g2's one group (and its depthwise copy)
    (tied,) = [g for g in spec.groups.values() if any(a.key == "stem.0.weight" for a in g.axes)]
    assert tied.size == 8 and "g2.primary.0" in tied.producers
    sizes = sorted(
        g.size
        for g in spec.groups.values()
        if any(a.key == "g1.primary.0.weight" and a.axis == 0 for a in g.axes)
    )
    assert sizes == [1, 11]


def test_dual_path_slices_are_residual_and_dense_groups() -> None:
    torch.manual_seed(0)
    model = DualPath().eval()
    spec = _check(model, X, coverage=1.0)  # stem 24, proj 24, a 24, last 24
    owners = {
        (ax.key, ax.offset): g.name for g in spec.groups.values() for ax in g.axes if ax.axis == 0
    }
    # the residual parts of proj and last move together; their dense parts on their own
    assert owners["proj.weight", 0] == owners["last.weight", 0]
    assert (
        len({owners["proj.weight", 0], owners["proj.weight", 16], owners["last.weight", 16]}) == 3
    )
    _recovers_a_planted_permutation(model, spec)


def test_narrow_along_channels_and_slices_along_space() -> None:
    torch.manual_seed(0)
    model = Narrowed().eval()
    spec = _check(model, X, coverage=1.0)  # stem 12 (5 + 7), a and b 8 (united)
    assert sorted(g.size for g in spec.groups.values()) == [5, 7, 8]
    _recovers_a_planted_permutation(model, spec)


def test_selective_kernel_stack_softmax_and_unflattened_attention() -> None:
    torch.manual_seed(0)
    model = SelectiveKernel().eval()
    # stem, both paths and both halves of the 2C attention logits are one group of 16;
    # reduce is a group of 8: 16 * 3 + 8 + 32 hidden channels, all moving
    spec = _check(model, X, coverage=1.0)
    assert sorted(g.size for g in spec.groups.values()) == [8, 16]
    _recovers_a_planted_permutation(model, spec)


def test_split_attention_cuts_the_grouped_conv_between_its_blocks() -> None:
    torch.manual_seed(0)
    model = SplitAttention().eval()
    # the grouped conv's two blocks are its two radix branches: each a group of 8, united
    # with the other (both are summed), and with both halves of fc2's logits; the stem's
    # 8 channels feed the grouped conv in two blocks of 4
    spec = _check(model, X, coverage=1.0)
    sizes = sorted((g.size, g.blocks) for g in spec.groups.values())
    assert sizes == [(4, 1), (8, 1), (8, 2)], spec.summary()
    _recovers_a_planted_permutation(model, spec)


class _SliceToOutput(nn.Module):
    """Half of a conv's channels reach the logits, the other half feeds a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return (h[:, :4] + self.head(h[:, 4:])).mean((2, 3))


def test_a_slice_that_reaches_the_output_freezes_only_its_channels() -> None:
    spec = _check(_SliceToOutput().eval(), X, coverage=4 / 8)  # conv's last 4 channels move
    assert [g.name for g in spec.groups.values()] == ["conv[4:8]"]
    assert any("conv[0:4]" in line and "output" in line for line in spec.report)


class _Indexing(nn.Module):
    """``x[0]`` (drops the batch axis), ``x[:, None]``, ``...`` and a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix = nn.Conv2d(3, 6, 1), nn.Conv1d(6, 4, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))[0]  # (6, H, W): channels on axis 0
        h = h[None, ..., 2:].flatten(2)  # (1, 6, H * (W - 2))
        h = F.log_softmax(h.transpose(1, 2), dim=2).transpose(1, 2)  # over the channels
        return self.mix(h).mean(2)


class _IntIndex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(self.conv(x)[:, 2].flatten(1))


def test_indexing_other_axes_keeps_the_channels_and_an_int_index_on_them_freezes() -> None:
    _check(_Indexing().eval(), X, coverage=1.0)
    spec = wb.permutation_spec(_IntIndex(), example_input=torch.randn(2, 3, 2, 6), verify=False)
    assert not spec.groups
    assert any("conv: an int index on the channel axis" in line for line in spec.report)


@pytest.mark.parametrize("kind", ["stack", "softmax"])
def test_stack_unites_its_inputs_and_softmax_keeps_the_label(kind: str) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
            self.softmax = nn.Softmax(dim=1)

        def forward(self, x):
            if kind == "stack":  # channelwise weights over a new last axis, then a sum
                y = torch.stack([self.a(x), self.b(x)], dim=-1).softmax(-1).sum(-1)
            else:  # softmax along the channel axis
                y = F.softmax(self.a(x), dim=1) + self.softmax(self.b(x))
            return self.head(y).mean((2, 3))

    spec = _check(Model().eval(), X, coverage=1.0)
    assert [g.size for g in spec.groups.values()] == [6]  # a and b united


class _Overlapping(nn.Module):
    """Overlapping slices of one conv's channels: a split in halves, the first two
    channels, and a slice of a slice (channels 5 and 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.a, self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)
        self.head = nn.Conv2d(4 + 4 + 4 + 4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        first, second = h.chunk(2, dim=1)
        y = [self.a(first), self.b(h[:, :2]), self.c(second[:, 1:3]), second]
        return self.head(torch.cat(y, 1)).mean((2, 3))


def test_slices_of_the_same_channels_divide_them_into_common_intervals() -> None:
    spec = _check(_Overlapping().eval(), X, coverage=1.0)  # conv 8, a, b, c 4 each
    rows = sorted(
        (ax.offset, g.size) for g in spec.groups.values() for ax in g.axes
        if ax.key == "conv.weight"
    )  # fmt: skip
    assert rows == [(0, 2), (2, 2), (4, 1), (5, 2), (7, 1)]
