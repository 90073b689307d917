"""The one small interface every fine-tuning method implements; the engine knows nothing else.

A method is built from a backbone (a ``ctlib.models.Backbone``), the number of classes, the image
size and its own settings, and provides:

- ``view_kinds``: the training views it needs per image (``"image"``: scale 0.2–1, ``"patch"``: 0.5–1);
- ``param_groups(lr, backbone_lr_mult)`` for the optimiser;
- ``training_step(views, labels, epoch) -> dict`` with ``loss`` (a tensor to back-propagate) and its
  named parts (floats, logged);
- ``heads(images) -> {name: logits}`` used by evaluation.
"""
from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn as nn


class Method(nn.Module):
    name: str = ""
    view_kinds: tuple[str, ...] = ("image",)
    Settings: type = None   # a dataclass of the method's options

    @classmethod
    def make_settings(cls, args: dict | None):
        args = dict(args or {})
        known = {f.name for f in fields(cls.Settings)}
        bad = sorted(set(args) - known)
        if bad:
            raise ValueError(f"unknown setting(s) {bad} for method {cls.name!r}: valid settings are {sorted(known)}")
        return cls.Settings(**args)

    def param_groups(self, lr: float, backbone_lr_mult: float) -> list[dict]:
        raise NotImplementedError

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor, epoch: int) -> dict:
        raise NotImplementedError

    def heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def protocol_note(self) -> str | None:
        """How this method's evaluation departs from its reference code, for the record's protocol labels."""
        return None


def pooled(fmap: torch.Tensor) -> torch.Tensor:
    """The reference 'bottleneck': global average pool + flatten."""
    return fmap.mean((2, 3))
