"""Normalizations beyond BatchNorm that the graph rules permute exactly: GroupNorm (channels
move within its groups: a block-structured group), weight-standardized convolutions (with
a per-channel gain), LayerNorm over the channels (ConvNeXt's ``LayerNorm2d``, a
channels-last ``nn.LayerNorm`` after a permute) and ConvNeXt-V2's global response
normalization. The modules are written here, so that none of this needs timm; the timm
classes themselves are checked at the end when timm is installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_graph_structured import _check, _recovers_a_planted_permutation
from torch import nn

import workbench as wb
from workbench.graph.verify import randomized_copy


class StdConv2d(nn.Conv2d):
    """A weight-standardized convolution with a gain (NF-ResNets): each output row of the
    weight standardized over its fan-in, then scaled by its own gain."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
        return F.conv2d(x, self.gain * w, self.bias, self.stride, self.padding, groups=self.groups)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.Module):
    """The original ConvNeXt code's channels-first LayerNorm, written out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight, self.bias = (
            nn.Parameter(torch.ones(channels)),
            nn.Parameter(torch.zeros(channels)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ResponseNorm(ChannelsFirstLayerNorm):
    """ConvNeXt-V2's global response normalization, channels-last, as timm writes it (its
    per-channel weight and bias as in a LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.norm(p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(1, 1, 1, -1), self.weight.view(1, 1, 1, -1), x * n)


class GroupNormNet(nn.Module):
    """GroupNorm with 4 groups (blocks), with one group (LayerNorm-like), with one group
    per channel (InstanceNorm-like) and functionally, on a residual stream."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem, self.gn = nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.conv, self.gn1 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(1, 16)
        self.conv2, self.inorm = nn.Conv2d(16, 8, 1), nn.GroupNorm(8, 8)
        self.conv3 = nn.Conv2d(8, 12, 1)
        self.w, self.b = nn.Parameter(torch.ones(12)), nn.Parameter(torch.zeros(12))
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.stem(x)))
        x = x + F.relu(self.gn1(self.conv(x)))
        x = F.relu(self.inorm(self.conv2(x)))
        x = F.relu(F.group_norm(self.conv3(x), 3, self.w, self.b))
        return self.head(x.mean((2, 3)))


class StandardizedNet(nn.Module):
    """Weight-standardized convolutions (one grouped), LayerNorm2d, a channels-last block
    (depthwise conv, permute, nn.LayerNorm, linears, global response norm, layer scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = StdConv2d(3, 16, 3, padding=1), LayerNorm2d(16)
        self.grouped = StdConv2d(16, 16, 3, padding=1, groups=4)
        self.dw, self.ln = nn.Conv2d(16, 16, 7, padding=3, groups=16), nn.LayerNorm(16)
        self.fc1, self.grn, self.fc2 = nn.Linear(16, 32), ResponseNorm(32), nn.Linear(32, 16)
        self.scale = nn.Parameter(torch.full((16,), 0.5))
        self.cf = ChannelsFirstLayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stem(x))
        x = x + F.relu(self.grouped(x))
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.grn(F.gelu(self.fc1(y))))
        x = x + (y * self.scale.view(1, 1, 1, -1)).permute(0, 3, 1, 2)
        return self.head(self.cf(x).mean((2, 3)))


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def test_groupnorm_groups_move_channels_within_their_groups() -> None:
    spec = _check(GroupNormNet(), X, 1.0)
    blocks = {name: g.blocks for name, g in spec.groups.items()}
    assert blocks == {"stem": 4, "conv2": 1, "conv3": 3}, spec.summary()  # conv joined stem
    assert {"gn.weight", "gn1.bias", "inorm.weight", "w", "b"} <= {
        ax.key for g in spec.groups.values() for ax in g.axes
    }
    _recovers_a_planted_permutation(GroupNormNet(), spec)


def test_a_permutation_across_groupnorm_groups_would_change_the_function() -> None:
    """The block constraint is needed: swapping two channels of different GroupNorm groups
    changes the outputs, swapping two of the same group does not."""
    model, spec = GroupNormNet(), wb.permutation_spec(GroupNormNet(), example_input=X)
    work = randomized_copy(model, seed=3)
    with torch.no_grad():
        expected = work(X)
    for first, second, exact in ((0, 1, True), (0, 4, False)):
        perm = {name: torch.arange(g.size) for name, g in spec.groups.items()}
        perm["stem"][[first, second]] = perm["stem"][[second, first]]
        spec.groups["stem"].blocks = 1  # let apply_permutation take the swap
        try:
            permuted = wb.apply_permutation(work, spec=spec, perm=perm)
        finally:
            spec.groups["stem"].blocks = 4
        with torch.no_grad():
            error = float((permuted(X) - expected).norm() / expected.norm())
        assert (error < 1e-5) == exact, (first, second, error)


def test_groupnorm_on_concatenated_channels_constrains_each_piece() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)
            self.gn, self.head = nn.GroupNorm(3, 12), nn.Conv2d(12, 10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.gn(torch.cat([self.a(x), self.b(x)], 1))))

    spec = _check(Cat(), X, 1.0)
    assert {name: g.blocks for name, g in spec.groups.items()} == {"a": 2, "b": 1}

    class Straddle(Cat):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
            self.gn = nn.GroupNorm(3, 12)  # groups of 4 channels: [0, 4) [4, 8) [8, 12)

    spec = wb.permutation_spec(Straddle(), example_input=X)
    assert spec.coverage() == 0.0
    assert any("GroupNorm groups straddle" in line for line in spec.report), spec.report


def test_weight_standardization_layernorm_over_channels_and_response_norm() -> None:
    spec = _check(StandardizedNet(), X, 1.0)
    keys = {ax.key for g in spec.groups.values() for ax in g.axes}
    assert {"stem.gain", "grouped.gain", "norm.weight", "ln.bias", "grn.weight", "scale"} <= keys
    assert {"cf.weight", "cf.bias"} <= keys
    assert spec.groups["stem"].blocks == 4  # the grouped standardized conv
    _recovers_a_planted_permutation(StandardizedNet(), spec)


@pytest.mark.parametrize("method", ["weight", "activation", "ste", "cca", "ot"])
def test_alignment_methods_keep_groupnorm_channels_in_their_groups(method, tiny_train) -> None:
    """Every method returns, for the blocked group, a permutation within its blocks (for a
    linear method: a permutation matrix of one, OT's transport plan included)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GroupNormNet(in_channels=1)
    spec = wb.permutation_spec(model, example_input=tiny_train.images[:2])
    shuffled = wb.apply_permutation(model, spec=spec, perm=wb.random_permutation(spec, seed=2))
    options = {"steps": 2, "progress": False} if method == "ste" else {}
    found = wb.match(model, shuffled, method=method, spec=spec, data=tiny_train, **options)
    stem = found.transform["stem"]
    stem = stem.out if isinstance(stem, wb.alignment.GroupMap) else stem
    if stem.ndim == 2:  # a linear method's map of the group: a permutation matrix
        assert torch.equal(stem.abs().sum(0), torch.ones(16))
        stem = stem.argmax(1)
    block = torch.arange(16) // 4
    assert torch.equal(block[stem.long()], block)


def test_timm_normalizations_give_exact_full_specs() -> None:
    pytest.importorskip("timm")
    from timm.layers import GroupNorm1, LayerNorm2d, ScaledStdConv2d, StdConv2d

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.na = ScaledStdConv2d(3, 16, 3, padding=1), GroupNorm1(16)
            self.b, self.nb = StdConv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
            self.c, self.nc = StdConv2d(16, 16, 1), LayerNorm2d(16)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.na(self.a(x)))
            x = x + F.relu(self.nb(self.b(x)))
            return self.head(self.nc(self.c(x)).mean((2, 3)))

    spec = _check(Net(), X, 1.0)
    assert spec.groups["a"].blocks == 4 and "a.gain" in {ax.key for ax in spec.groups["a"].axes}
