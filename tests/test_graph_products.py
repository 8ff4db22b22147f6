"""Products written as functions that the graph rules permute exactly: an anti-aliasing
blur by ``F.conv2d`` with one fixed filter for every channel (timm's ``BlurPool2d``), a
depthwise ``F.conv2d`` by a filter parameter, global-context attention's ``x @ softmax``
pooling with its ``(N, 1, C, 1) -> (N, C, 1, 1)`` view, and a product over the channels
(a Gram-like ``a^T b``). Filters the rules cannot follow stay frozen, never wrong. The
modules are written here, so that none of this needs timm; the timm models are checked at
the end when timm is installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_graph_structured import _check, _recovers_a_planted_permutation
from torch import nn

import workbench as wb


class Blur(nn.Module):
    """A 3x3 binomial blur with stride 2, one filter per channel (``groups=channels``):
    the same filter for all (``distinct=False``) or a different one for each."""

    def __init__(self, channels: int, distinct: bool = False) -> None:
        super().__init__()
        kernel = torch.tensor([1.0, 2.0, 1.0])
        filt = (kernel[:, None] * kernel[None, :] / 16).expand(channels, 1, 3, 3).clone()
        if distinct:
            filt = filt * torch.linspace(0.5, 1.5, channels).view(-1, 1, 1, 1)
        self.register_buffer("filt", filt, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=self.channels
        )


class BlurNet(nn.Module):
    def __init__(self, blur: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.blur = blur
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blur(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class DepthwiseByParameter(nn.Module):
    """A depthwise convolution written with ``F.conv2d`` and its own filter parameter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 3, 3) / 3)
        self.bias = nn.Parameter(torch.randn(channels) / 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1, groups=x.shape[1])


class GlobalContext(nn.Module):
    """Global-context attention as timm writes it: a softmax over the positions pools the
    channels by a matrix product, an MLP of the context is added back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_attn = nn.Conv2d(channels, 1, 1)
        self.fc1, self.fc2 = nn.Conv2d(channels, 8, 1), nn.Conv2d(8, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        attn = F.softmax(self.conv_attn(x).reshape(n, 1, h * w), dim=-1).unsqueeze(3)
        context = (x.reshape(n, c, h * w).unsqueeze(1) @ attn).view(n, c, 1, 1)
        return x + self.fc2(torch.relu(self.fc1(context)))


class ContextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.gc = GlobalContext(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gc(torch.relu(self.bn1(self.conv1(x)))).mean((2, 3)))


class Gram(nn.Module):
    """Two branches multiplied over their channels: ``a^T b`` sums over the channels, so
    both must move alike, and the product does not move at all."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(3, 12, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x)).flatten(2)  # (N, 12, 16)
        b = torch.relu(self.b(x)).flatten(2)
        return self.head((a.transpose(1, 2) @ b).mean(1))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
X4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_a_blur_with_one_filter_for_every_channel_is_channelwise() -> None:
    model = BlurNet(Blur(16)).eval()
    spec = _check(model, X, coverage=1.0)
    assert set(spec.groups) == {"conv1", "conv2"}
    _recovers_a_planted_permutation(model, spec)


def test_a_blur_with_a_filter_per_channel_that_is_not_saved_stays_frozen() -> None:
    model = BlurNet(Blur(16, distinct=True)).eval()
    spec = wb.permutation_spec(model, example_input=X)
    assert "conv1" not in spec.groups and "conv2" in spec.groups, spec.summary()
    assert any("filter the state dict does not hold" in line for line in spec.report)
    assert spec.verification["failed_groups"] == []


def test_a_depthwise_conv_by_a_filter_parameter_follows_the_group() -> None:
    model = BlurNet(DepthwiseByParameter(16)).eval()
    spec = _check(model, X, coverage=1.0)
    keys = {ax.key for ax in spec.groups["conv1"].axes}
    assert {"blur.weight", "blur.bias"} <= keys
    _recovers_a_planted_permutation(model, spec)


def test_global_context_pooling_by_a_matrix_product_keeps_the_channels() -> None:
    model = ContextNet().eval()
    spec = _check(model, X, coverage=1.0)
    # the context's MLP adds to the channels it pooled: one group with conv1
    assert "gc.fc2.weight" in {ax.key for ax in spec.groups["conv1"].axes}
    _recovers_a_planted_permutation(model, spec)


def test_a_product_over_the_channels_unites_both_operands() -> None:
    model = Gram().eval()
    spec = _check(model, X4, coverage=1.0)
    assert list(spec.groups) == ["a"] and spec.groups["a"].producers == ["a", "b"]


def test_a_product_that_mixes_the_channels_axis_is_frozen() -> None:
    class Mixing(Gram):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.a(x)).flatten(2)
            b = torch.relu(self.b(x)).flatten(2)
            return self.head((a @ b.transpose(1, 2)).flatten(1)[:, :16])  # (N, 12, 12)

    spec = wb.permutation_spec(Mixing().eval(), example_input=X4)
    assert spec.groups == {} and spec.verification["failed_groups"] == []
    assert any("mixes the channels' axis" in line for line in spec.report), spec.report


@pytest.mark.parametrize("name", ["resnetblur18", "gcresnet50t"])
def test_timm_blur_and_global_context_models_are_fully_covered(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, num_classes=10).eval()
    spec = wb.permutation_spec(model, example_input=torch.randn(2, 3, 64, 64))
    assert spec.coverage() == 1.0, spec.summary()
    assert spec.verification["failed_groups"] == []


class Widening(nn.Module):
    """FastViT's downsampling: a depthwise conv with two filters per channel (groups =
    input channels < output channels) added to a 1x1 conv of its own, a block on top."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.widen = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn1 = nn.BatchNorm2d(16)
        self.mix, self.bn2 = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.widen(torch.relu(self.bn0(self.stem(x))))))
        y = y + self.bn2(self.mix(y))  # the widened channels and a layer's own, added
        return self.head(torch.relu(y).mean((2, 3)))


def test_a_conv_with_k_filters_per_channel_moves_them_with_it_as_a_block() -> None:
    model = Widening().eval()
    spec = _check(model, X, coverage=1.0)
    # one group: the stem's 8 channels, the widened 16 (and mix's, added to them) in 8
    # blocks of two that move with them
    assert list(spec.groups) == ["stem"] and spec.groups["stem"].size == 8, spec.summary()
    blocks = {(ax.key, ax.axis): ax.block for ax in spec.groups["stem"].axes}
    assert blocks["widen.weight", 0] == 2 and blocks["mix.weight", 0] == 2
    assert blocks["mix.weight", 1] == 2 and blocks["head.weight", 1] == 2
    assert blocks["stem.weight", 0] == 1
    _recovers_a_planted_permutation(model, spec)
