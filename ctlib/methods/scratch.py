"""Training from scratch (BASELINES.md §2.3; not in TLlib): ERM from a random initialisation.

The method re-initialises the backbone when it is built, whatever weights it came with, and marks it
``pretrained = "none (scratch)"``. ResNets get torchvision's ResNet initialisation (conv weights
Kaiming-normal, fan_out, ReLU gain; BN γ = 1, β = 0, running statistics reset; the unused ImageNet
classifier its default Linear init); other backbones get ``reset_parameters()`` of every module that
has one (their own default initialisation). Every optimiser group runs at the base lr (TLlib's
``finetune = False``; ``backbone_lr_mult`` is ignored). The budget is ERM's unless a recipe says
otherwise — any longer or faster schedule for scratch is a project decision to record.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.backbones import RESNETS
from ..validation import check_settings, integer, real
from .erm import ERM


@dataclass
class ScratchSettings:
    smoothing: float = 0.0          # label smoothing of the cross-entropy
    init_seed: int | None = None    # seed of the initialisation; None: draw from the current torch RNG

    def __post_init__(self):
        check_settings("scratch", [real("smoothing", self.smoothing, 0, 1, hi_open=True),
                                   integer("init_seed", self.init_seed, 0, none=True)])


def torchvision_resnet_init(module: nn.Module) -> None:
    """torchvision's ``ResNet.__init__`` initialisation (zero_init_residual=False) on every submodule."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()


def reset_all_parameters(module: nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()


def randomise_backbone(backbone, seed: int | None = None) -> None:
    """Random initialisation of ``backbone`` in place (see the module docstring)."""
    init = torchvision_resnet_init if backbone.name in RESNETS else reset_all_parameters
    with torch.no_grad():
        if seed is None:
            init(backbone)
        else:
            with torch.random.fork_rng(devices=[]):   # the global RNG is left as it was
                torch.manual_seed(seed)
                init(backbone)
    backbone.pretrained = "none (scratch)"


class Scratch(ERM):
    name = "scratch"
    view_kinds = ("image",)
    Settings = ScratchSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: ScratchSettings | None = None):
        settings = settings or ScratchSettings()
        randomise_backbone(backbone, settings.init_seed)
        super().__init__(backbone, num_classes, image_size, settings)

    def param_groups(self, lr, backbone_lr_mult):
        return super().param_groups(lr, 1.0)      # every group at 1x: backbone_lr_mult is ignored
