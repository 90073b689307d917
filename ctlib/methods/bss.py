"""BSS, Batch Spectral Shrinkage (BASELINES.md §2.6; TLlib ``bss.py``).

L = CE(y, t) + η · Σ_{i=1..k} σ_i², σ_1 ≤ σ_2 ≤ … the k smallest singular values of the batch feature
matrix F ∈ R^{B×D} (the pooled features, the head's input; no normalisation). η = ``trade_off``,
k = ``k``. The gradient reaches the backbone through the SVD; the head is not involved.

TLlib takes the full ``torch.svd`` of Fᵀ (deprecated); ``torch.linalg.svdvals`` gives the same min(B, D)
values. The SVD runs in fp32, outside any autocast. The value depends on B: the engine's batches
all have B samples, as TLlib's ``drop_last`` loader. TLlib silently wraps around for k > min(B, D);
we raise an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..validation import check_settings, integer, real
from .base import pooled
from .erm import ERM


@dataclass
class BSSSettings:
    k: int = 1                # how many of the smallest singular values are penalised
    trade_off: float = 0.001  # η

    def __post_init__(self):
        # k is also at most min(batch size, feature dim): checked on the first batch
        check_settings("bss", [integer("k", self.k, 1), real("trade_off", self.trade_off, 0)])


def spectral_shrinkage(features: torch.Tensor, k: int) -> torch.Tensor:
    """Σ of the k smallest squared singular values of ``features`` (B × D), computed in fp32."""
    n = min(features.shape)
    if k > n:
        raise ValueError(f"BSS: k = {k} exceeds the number of singular values min(B, D) = {n}: "
                         f"choose 1 <= k <= {n}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        s = torch.linalg.svdvals(features.float())          # descending
    return (s[n - k:] ** 2).sum()


class BSS(ERM):
    name = "bss"
    view_kinds = ("image",)
    Settings = BSSSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: BSSSettings | None = None):
        super().__init__(backbone, num_classes, image_size, settings or BSSSettings())

    def training_step(self, views, labels, epoch):
        s = self.settings
        f = pooled(self.backbone(views[0]))
        logits = self.head(f)
        cls = F.cross_entropy(logits, labels)
        bss = spectral_shrinkage(f, s.k)
        loss = cls + s.trade_off * bss
        return {"loss": loss, "cls": cls.item(), "bss": bss.item(),
                "acc": (logits.argmax(1) == labels).float().mean().item()}
