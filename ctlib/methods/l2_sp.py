"""L2-SP (BASELINES.md §2.4; TLlib ``delta.py --regularization-type l2_sp``).

L = CE(y, t) + α·Ω_SP + β·Ω_head with
- Ω_SP = ½ Σ_p Σ (w_p − w⁰_p)² over every backbone parameter (conv weights, BN γ and β; not the running
  statistics), w⁰ = the backbone's parameters when the method is built, kept as buffers (``w0.*``) so
  that a resumed run, or a model file, carries them exactly;
- Ω_head = ½ (‖W‖² + ‖b‖²) on the new head, weight and bias.
α = ``trade_off_backbone``, β = ``trade_off_head`` (0.01 each). Both are plain sums, independent of the
batch. Ω_SP is 0 at the first step.

Departures from TLlib, all without effect on the loss value:
- TLlib runs a frozen source model's forward pass (and DELTA's feature hooks) at every L2-SP step and
  never uses it, and accepts only resnet50/101: we skip that forward and take any backbone;
- TLlib computes ``0.5 * norm(w − w⁰) ** 2`` (the square root has an undefined gradient at w = w⁰, which
  PyTorch sets to 0); we compute ``0.5 * ((w − w⁰) ** 2).sum()``: the same value, the exact gradient;
- TLlib's backbone also holds the unused ImageNet ``fc`` (its term is always 0); ours does not.
TLlib trains L2-SP with weight decay 0 (the ``delta.py`` default): that is the run's ``weight_decay``,
which the recipes set to 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_settings, real
from .base import pooled
from .erm import ERM


@dataclass
class L2SPSettings:
    trade_off_backbone: float = 0.01   # α, on Ω_SP
    trade_off_head: float = 0.01       # β, on Ω_head

    def __post_init__(self):
        check_settings("l2_sp", [real("trade_off_backbone", self.trade_off_backbone, 0),
                                 real("trade_off_head", self.trade_off_head, 0)])


class _StartingPoint(nn.Module):
    """w⁰: one buffer per backbone parameter, named after it ('.' spelt '__')."""

    def __init__(self, named_params):
        super().__init__()
        self.names = []
        for name, p in named_params:
            key = name.replace(".", "__")
            if key in self._buffers:
                raise ValueError(f"L2-SP: two backbone parameters map to the buffer name {key!r}")
            self.register_buffer(key, p.detach().clone())
            self.names.append(key)

    def tensors(self) -> list[torch.Tensor]:
        return [self._buffers[k] for k in self.names]


class L2SP(ERM):
    name = "l2_sp"
    view_kinds = ("image",)
    Settings = L2SPSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: L2SPSettings | None = None):
        super().__init__(backbone, num_classes, image_size, settings or L2SPSettings())
        self.w0 = _StartingPoint(backbone.body.named_parameters())

    def omega_sp(self) -> torch.Tensor:
        params = list(self.backbone.body.parameters())
        return 0.5 * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, self.w0.tensors()))

    def omega_head(self) -> torch.Tensor:
        return 0.5 * ((self.head.weight ** 2).sum() + (self.head.bias ** 2).sum())

    def training_step(self, views, labels, epoch):
        s = self.settings
        logits = self.head(pooled(self.backbone(views[0])))
        cls = F.cross_entropy(logits, labels)
        sp, hd = self.omega_sp(), self.omega_head()
        loss = cls + s.trade_off_backbone * sp + s.trade_off_head * hd
        return {"loss": loss, "cls": cls.item(), "omega_sp": sp.item(), "omega_head": hd.item(),
                "acc": (logits.argmax(1) == labels).float().mean().item()}
