"""StochNorm (BASELINES.md §2.8; TLlib ``stochnorm.py`` and ``tllib/normalization/stochnorm.py``).

Every BatchNorm layer of the backbone is replaced by a StochNorm layer of the same kind, keeping its
γ, β, running statistics, eps and momentum, and its parameter/buffer names (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so checkpoints round-trip. In training
mode each layer draws, once per forward pass, a mask s ∈ {0, 1}^channels ~ Bernoulli(p) from the torch
RNG on the input's device, shared by all samples and positions, and outputs

    (1 − s) ⊙ BN_running(x) + s ⊙ BN_batch(x),

both branches with the affine γ, β; BN_running uses the running statistics as they were before this
forward pass, and BN_batch is standard training-mode BN, which updates the running statistics on every
forward pass whatever s is. In eval mode the layer is plain BN. The loss is CE; groups as ERM.

TLlib quirks: ``convert_model`` passes ``--prob`` into ``track_running_stats``, so every layer keeps
p = 0.5 whatever the flag says (and ``--prob 0`` crashes); our ``p`` works for any value in [0, 1] and
the default 0.5 is TLlib's. TLlib draws the masks from numpy's unseeded global RNG and moves them to
the GPU with a hard-coded CUDA call; ours come from the seeded torch RNG on the input's device.
TLlib's layers have no ``num_batches_tracked``; ours keep (and count) it, which changes nothing when the
momentum is set (the only use is momentum=None, a cumulative average, as in BN).
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
class StochNormSettings:
    p: float = 0.5   # probability that a channel uses batch statistics (TLlib: always 0.5, --prob ignored)

    def __post_init__(self):
        check_settings("stochnorm", [real("p", self.p, 0, 1)])


class _StochNormMixin:
    p: float = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        z0 = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        z1 = super().forward(x)       # batch statistics; updates the running ones (and the batch count)
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        s = torch.bernoulli(torch.full(shape, float(self.p), device=x.device))   # 1: batch statistics
        return torch.where(s.bool(), z1, z0)      # = (1 − s)·z0 + s·z1 exactly, s being 0 or 1

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"


class StochNorm1d(_StochNormMixin, nn.BatchNorm1d):
    pass


class StochNorm2d(_StochNormMixin, nn.BatchNorm2d):
    pass


class StochNorm3d(_StochNormMixin, nn.BatchNorm3d):
    pass


_STOCH = {nn.BatchNorm1d: StochNorm1d, nn.BatchNorm2d: StochNorm2d, nn.BatchNorm3d: StochNorm3d}


def to_stochnorm(bn: nn.modules.batchnorm._BatchNorm, p: float) -> nn.Module:
    """A StochNorm layer with ``bn``'s settings and a copy of its state."""
    kind = next((k for k in _STOCH if isinstance(bn, k)), None)
    if kind is None:
        raise ValueError(f"StochNorm: cannot convert {type(bn).__name__} (only BatchNorm1d/2d/3d)")
    if not bn.track_running_stats:
        raise ValueError("StochNorm needs BatchNorm layers that track running statistics")
    sn = _STOCH[kind](bn.num_features, bn.eps, bn.momentum, bn.affine, True,
                      device=bn.running_mean.device, dtype=bn.running_mean.dtype)
    sn.p = p
    sn.load_state_dict(bn.state_dict())
    sn.train(bn.training)
    return sn


def convert_to_stochnorm(module: nn.Module, p: float) -> int:
    """Replace every BatchNorm below ``module`` in place; returns how many were replaced."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, _StochNormMixin):
            setattr(module, name, to_stochnorm(child, p))
            n += 1
        else:
            n += convert_to_stochnorm(child, p)
    return n


class StochNorm(ERM):
    name = "stochnorm"
    view_kinds = ("image",)
    Settings = StochNormSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: StochNormSettings | None = None):
        settings = settings or StochNormSettings()
        converted = convert_to_stochnorm(backbone, settings.p)
        super().__init__(backbone, num_classes, image_size, settings)
        self.converted = converted      # how many BatchNorm layers became StochNorm

    def training_step(self, views, labels, epoch):
        logits = self.head(pooled(self.backbone(views[0])))
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "cls": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item()}
