"""Linear probing (BASELINES.md §2.2; not in TLlib): the pre-trained backbone frozen, only a new head trained.

The backbone's parameters have ``requires_grad = False`` and the backbone stays in eval mode even while
the method trains (``train()`` is overridden): BN normalises with, and never updates, its running
statistics, and drop-connect/dropout are off, so the features are exactly the pre-trained model's.
A plain ``model.train()`` would turn the probe into BN adaptation. Features are recomputed on every
(augmented) view; caching features of val-transformed images would be a different, faster variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_settings, real
from .erm import ERM


@dataclass
class LinearProbeSettings:
    smoothing: float = 0.0   # label smoothing of the cross-entropy

    def __post_init__(self):
        check_settings("linear_probe", [real("smoothing", self.smoothing, 0, 1, hi_open=True)])


class LinearProbe(ERM):
    """ERM's head and loss on frozen features."""
    name = "linear_probe"
    Settings = LinearProbeSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224,
                 settings: LinearProbeSettings | None = None):
        super().__init__(backbone, num_classes, image_size, settings)   # head: PyTorch default init, as ERM
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()          # frozen features: BN on running statistics, whatever the mode
        return self

    def param_groups(self, lr, backbone_lr_mult):
        return [{"params": list(self.head.parameters()), "lr": lr}]   # head only, at 1x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return super().features(images)
