"""ERM / vanilla fine-tuning (TLlib erm.py): cross-entropy on a new head, whole network trained."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_settings, real
from .base import Method, pooled


@dataclass
class ERMSettings:
    smoothing: float = 0.0   # label smoothing of the cross-entropy

    def __post_init__(self):
        check_settings("erm", [real("smoothing", self.smoothing, 0, 1, hi_open=True)])


class ERM(Method):
    name = "erm"
    view_kinds = ("image",)
    Settings = ERMSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: ERMSettings | None = None):
        super().__init__()
        self.settings = settings or self.Settings()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels, num_classes)  # PyTorch default init, as TLlib

    def param_groups(self, lr, backbone_lr_mult):
        return [{"params": list(self.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                {"params": list(self.head.parameters()), "lr": lr}]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The head's input: the backbone's pooled last feature map."""
        return pooled(self.backbone(images))

    def training_step(self, views, labels, epoch):
        logits = self.head(self.features(views[0]))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.settings.smoothing)
        return {"loss": loss, "cls": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def heads(self, images):
        return {"main": self.head(self.features(images))}
