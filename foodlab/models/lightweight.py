"""Lightweight segmentation heads: a plain convolutional baseline and a fast UNet.

Both take (B, 3, H, W) RGB images in [0, 1], normalize them inside (ImageNet
mean/std as buffers, so callers never have to) and return logits
(B, num_classes, H, W) at the input resolution.

- ``baseline``: three Conv-BN-ReLU-MaxPool stages, three ConvTranspose upsamplers
  and a 1x1 classifier; the reference the benchmarks compare the fast head with.
- ``fast`` is a small depthwise-separable UNet: a stride-2 stem (nothing runs at
  full resolution), four downsampling stages to 1/32 for context, skip
  connections back to 1/2, and a bilinear upsample of the logits to the input
  size. It costs far less per step than the baseline (figures in
  ``experiments/results/``) and sees a much larger receptive field; it works with
  channels_last and bf16/fp16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """F.interpolate that also works on MPS (float32 for modes it lacks in half precision)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if x.device.type == "mps" and (mode == "bicubic" or x.dtype != torch.float32):
        return F.interpolate(x.float(), size=size, mode=mode, align_corners=False).to(x.dtype)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class Normalize(nn.Module):
    """[0, 1] RGB -> ImageNet-normalized; the statistics travel with the model as buffers."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class _Head(nn.Module):
    """Shared frame: normalize, resize to a multiple of ``divisor`` if needed, logits at input size."""

    divisor = 8

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.normalize = Normalize()

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        d = self.divisor
        work = (max(d, round(size[0] / d) * d), max(d, round(size[1] / d) * d))
        x = interpolate(self.normalize(images), work)
        return interpolate(self.body(x), size)


class BaselineHead(_Head):
    """Three Conv-BN-ReLU-MaxPool stages down, three ConvTranspose up: the benchmarks' reference head."""

    divisor = 8

    def __init__(self, num_classes: int = 1):
        super().__init__(num_classes)

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.encoder = nn.Sequential(*stage(3, 64), *stage(64, 128), *stage(128, 256))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 2, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(32, num_classes, 1),
        )

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 (optionally strided) + pointwise 1x1, each with BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, 1))


class FastHead(_Head):
    """Depthwise-separable UNet: stride-2 stem, encoder to 1/32, skips back to 1/2, bilinear logits.

    ``widths`` are the channels at 1/2, 1/4, 1/8, 1/16, 1/32. The decoder upsamples
    bilinearly and *adds* a 1x1 projection of the skip (cheaper than concatenation)
    before one separable block per level.
    """

    divisor = 32

    def __init__(self, num_classes: int = 1, widths: tuple[int, ...] = (16, 24, 48, 96, 160)):
        super().__init__(num_classes)
        self.stem = conv_bn_relu(3, widths[0], 3, stride=2)
        self.down = nn.ModuleList(SeparableBlock(a, b, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.context = SeparableBlock(widths[-1], widths[-1])
        self.skip = nn.ModuleList(conv_bn_relu(w, w, 1) for w in widths[:-1])
        self.up = nn.ModuleList(SeparableBlock(b, a) for a, b in zip(widths[:-1], widths[1:]))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        y = self.context(feats.pop())
        for level in reversed(range(len(self.up))):
            y = self.up[level](y)  # reduce channels at the coarse resolution (cheap) ...
            skip = feats[level]
            y = interpolate(y, tuple(skip.shape[-2:])) + self.skip[level](skip)  # ... then upsample and fuse
        return self.classifier(y)


HEADS = {"baseline": BaselineHead, "fast": FastHead}


def build_head(name: str = "fast", num_classes: int = 1) -> nn.Module:
    """A lightweight head by name: "fast" (default) or "baseline"."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}") from None
    return cls(num_classes)
