"""The few-shot backbones of the paper, registered as timm models.

Teachers and meta-models are always "a timm name", so the zoo, the inverter
and the meta-learner never special-case an architecture. Importing this
module registers ``conv4``, ``cifar_resnet10`` and ``cifar_resnet18`` with
``timm.models.register_model``; the plugin's ``register_architectures`` hook
names them, so ``purer.models.create_model`` imports this module on demand.

Each model follows timm's conventions: ``forward_features`` returns the
unpooled feature map, ``forward_head(x, pre_logits=False)`` pools (or
flattens) and classifies, ``get_classifier`` / ``reset_classifier`` expose the
head (ICFIL trains a new one on a frozen backbone), ``num_features`` is the
head's input width and ``pretrained_cfg`` holds the input size and CIFAR
normalisation.

Example:
    >>> import timm, purer_plugins.architectures.backbones  # noqa: F401
    >>> model = timm.create_model("conv4", num_classes=5)
    >>> model.num_features
    128
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs
from torch import Tensor, nn

from purer.api import norm_relu_maxpool

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 5, "input_size": (3, 32, 32), "pool_size": None,
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR_MEAN, "std": CIFAR_STD,
            "license": "mit", **kwargs}


# timm reads this module-level dict when an entry point is registered.
default_cfgs = generate_default_cfgs({
    "conv4": _cfg(first_conv="blocks.0.conv", classifier="fc"),
    "cifar_resnet10": _cfg(first_conv="stem.conv", classifier="fc"),
    "cifar_resnet18": _cfg(first_conv="stem.conv", classifier="fc"),
})


def _feature_size(img_size: int, blocks: int = 4) -> int:
    """Side of the map after ``blocks`` floor-halving 2x2 max-pools."""
    for _ in range(blocks):
        img_size //= 2
    if img_size < 1:
        raise ValueError("conv4 needs img_size >= 16 (four 2x2 max-pools)")
    return img_size


class ConvBlock(nn.Module):
    """Conv3x3 (bias) - BatchNorm - ReLU - MaxPool2: the Conv4 unit."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        pooled = norm_relu_maxpool(x, self.bn, 2, (self.act, self.pool))  # same math, less memory traffic
        return pooled if pooled is not None else self.pool(self.act(self.bn(x)))


class Conv4(nn.Module):
    """The standard few-shot Conv4; the head sees the flattened map.

    Flattening (not pooling) makes the head's width depend on the input size,
    so it is fixed at construction from ``img_size`` (32 gives ``width*4``,
    84 gives ``width*25``), which keeps the weights loadable without a
    forward pass.
    """

    def __init__(self, num_classes: int = 5, in_chans: int = 3, width: int = 32,
                 img_size: int = 32, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.img_size = img_size
        self.drop_rate = drop_rate
        chans = [in_chans, width, width, width, width]
        self.blocks = nn.Sequential(*[ConvBlock(chans[i], chans[i + 1]) for i in range(4)])
        side = _feature_size(img_size)
        self.num_features = width * side * side
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(x, 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.downsample(x))


class Stem(nn.Module):
    """CIFAR stem: Conv3x3 stride 1, no bias, BN, ReLU and no max-pool."""

    def __init__(self, in_chans: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chs, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class CifarResNet(nn.Module):
    """ResNet-10/18 for small images: four stages of BasicBlocks, global pool.

    ``width`` multiplies every channel count (1.0 gives 64/128/256/512), so
    tests can build a tiny network with the real topology. ``img_size`` is
    accepted and ignored: the global pool takes any input size.
    """

    def __init__(self, layers: tuple[int, ...], num_classes: int = 5, in_chans: int = 3,
                 width: float = 1.0, img_size: int | None = None, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        widths = [max(1, int(round(64 * width * 2 ** i))) for i in range(4)]
        self.stem = Stem(in_chans, widths[0])
        stages, in_chs = [], widths[0]
        for i, (depth, out_chs) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(in_chs, out_chs, stride=2 if (i > 0 and j == 0) else 1))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _build(cls: Any, variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights are published; "
                         "use pretrained=False or load a zoo teacher")
    return build_model_with_cfg(cls, variant, pretrained=False, **kwargs)


@register_model
def conv4(pretrained: bool = False, **kwargs: Any) -> Conv4:
    """Conv4 (4 x Conv3x3-BN-ReLU-MaxPool, width 32), flatten + Linear."""
    img_size = int(kwargs.get("img_size", 32))
    if img_size != 32:  # keep the recorded input size in step with the head
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.setdefault("input_size", (3, img_size, img_size))
        kwargs["pretrained_cfg_overlay"] = overlay
    return _build(Conv4, "conv4", pretrained, **kwargs)


@register_model
def cifar_resnet10(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR-style ResNet-10: BasicBlocks [1, 1, 1, 1], stride-1 stem, no max-pool."""
    return _build(CifarResNet, "cifar_resnet10", pretrained, layers=(1, 1, 1, 1), **kwargs)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR-style ResNet-18: BasicBlocks [2, 2, 2, 2], stride-1 stem, no max-pool."""
    return _build(CifarResNet, "cifar_resnet18", pretrained, layers=(2, 2, 2, 2), **kwargs)
