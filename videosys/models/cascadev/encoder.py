"""CascadeV's semantic compressor: StableCascade's EfficientNet encoder (1x32x32 per frame).

An EfficientNetV2-S feature extractor (`backbone`, torchvision's `efficientnet_v2_s().features`
layout, so stabilityai/StableWurst's effnet_encoder.safetensors loads unchanged) and a `mapper`
(1x1 conv to 16 channels + BatchNorm without affine) give a (16, H/32, W/32) latent per frame.
Frames go in as [-1, 1]; the ImageNet normalisation the release applies outside the module
(patch/evae.py) is part of `encode`, so callers never forget it.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from videosys.models.modules.pretrained import PretrainedModel

# torchvision's ImageNet statistics (evae.py's Normalize)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNetV2-S stages (arXiv 2104.00298 Table 4, torchvision's _efficientnet_conf):
# (fused, expand_ratio, kernel, stride, in_channels, out_channels, layers)
V2_S_STAGES = (
    (True, 1, 3, 1, 24, 24, 2),
    (True, 4, 3, 2, 24, 48, 4),
    (True, 4, 3, 2, 48, 64, 4),
    (False, 4, 3, 2, 64, 128, 6),
    (False, 6, 3, 1, 128, 160, 9),
    (False, 6, 3, 2, 160, 256, 15),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never more than 10% down (the TF / torchvision rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


@dataclass
class EfficientNetEncoderConfig:
    """Defaults: StableCascade's encoder (EfficientNetV2-S features, 1280 -> 16 channels)."""

    stages: list = field(default_factory=lambda: [list(s) for s in V2_S_STAGES])
    last_channels: int = 1280
    latent_channels: int = 16
    bn_eps: float = 1e-3  # torchvision's efficientnet_v2_s uses BatchNorm2d(eps=1e-3)

    @property
    def downsample(self) -> int:
        """Pixels per latent along a side: the stem's stride 2 times the stages'."""
        out = 2
        for stage in self.stages:
            out *= stage[3]
        return out


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> optional SiLU: keys .0 / .1 as torchvision's Conv2dNormActivation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True,
                 eps: float = 1e-3):
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(c_out, eps=eps)]
        super().__init__(*layers, *([nn.SiLU(inplace=True)] if act else []))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(nn.functional.silu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class MBConvBlock(nn.Module):
    """EfficientNet's inverted residual: `block` holds the layers (torchvision's key layout).

    Fused (V2's early stages): a full kxk conv expands (or, at ratio 1, is the only conv), a 1x1 projects.
    Not fused: 1x1 expand, kxk depthwise, squeeze-excite, 1x1 project. Residual when the shape is kept
    (stochastic depth is a training-time identity here).
    """

    def __init__(self, fused: bool, expand_ratio: float, kernel: int, stride: int, c_in: int, c_out: int, eps: float):
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        mid = make_divisible(c_in * expand_ratio)
        if fused:
            layers = [ConvNormAct(c_in, mid if mid != c_in else c_out, kernel, stride, eps=eps)]
            if mid != c_in:
                layers.append(ConvNormAct(mid, c_out, 1, act=False, eps=eps))
        else:
            layers = [ConvNormAct(c_in, mid, 1, eps=eps)] if mid != c_in else []
            layers += [ConvNormAct(mid, mid, kernel, stride, groups=mid, eps=eps),
                       SqueezeExcite(mid, max(1, c_in // 4)),
                       ConvNormAct(mid, c_out, 1, act=False, eps=eps)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def efficientnet_features(cfg: EfficientNetEncoderConfig) -> nn.Sequential:
    """stem (stride 2), one Sequential per stage, 1x1 head: torchvision's `features` indices 0..len+1."""
    layers = [ConvNormAct(3, cfg.stages[0][4], 3, 2, eps=cfg.bn_eps)]
    for fused, ratio, kernel, stride, c_in, c_out, depth in cfg.stages:
        layers.append(nn.Sequential(*(MBConvBlock(fused, ratio, kernel, stride if i == 0 else 1,
                                                  c_in if i == 0 else c_out, c_out, cfg.bn_eps)
                                      for i in range(depth))))
    layers.append(ConvNormAct(cfg.stages[-1][5], cfg.last_channels, 1, eps=cfg.bn_eps))
    return nn.Sequential(*layers)


class EfficientNetEncoder(PretrainedModel):
    """(N, 3, H, W) frames in [-1, 1] -> (N, latent_channels, H/32, W/32)."""

    config_class = EfficientNetEncoderConfig
    class_name = "EfficientNetEncoder"
    weights_name = "effnet_encoder.safetensors"  # the file name in stabilityai/StableWurst

    def __init__(self, config: EfficientNetEncoderConfig):
        super().__init__()
        self.config = config
        self.backbone = efficientnet_features(config)
        self.mapper = nn.Sequential(nn.Conv2d(config.last_channels, config.latent_channels, 1, bias=False),
                                    nn.BatchNorm2d(config.latent_channels, affine=False))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        mean, std = (torch.tensor(v, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
                     for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = ((frames + 1) / 2 - mean) / std
        return self.mapper(self.backbone(x))
