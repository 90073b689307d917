"""The one small interface every fine-tuning method implements; the engine knows nothing else.

A method is built from a backbone (a ``ctlib.models.Backbone``), the number of classes, the image
size and its own settings, and provides:

- ``view_kinds``: the training views it needs per image (``"image"``: scale 0.2–1, ``"patch"``: 0.5–1);
- ``param_groups(lr, backbone_lr_mult)`` for the optimiser;
- ``training_step(views, labels, epoch) -> dict`` with ``loss`` (a tensor to back-propagate) and its
  named parts (floats, logged);
- ``heads(images) -> {name: logits}`` used by evaluation.

Optional:

- ``prepare(ctx) -> {name: tensor} | None``: a one-off pre-pass before training (DELTA's channel
  attention, Co-Tuning's class relationship, LWF's recorded source logits), given a
  ``PrepareContext``. The engine runs it once per run under a fixed seed, caches the result in the
  run folder (``prepare.pt``, keyed by the config hash) and hands it to ``set_prepared(state)``, also
  when resuming, before any checkpoint is loaded. Returning None means "nothing to prepare".
- ``needs_index = True``: the engine calls ``training_step(views, labels, epoch, index=index)`` with
  the batch's dataset indices (LWF looks up its recorded logits by index).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader


@dataclass
class PrepareContext:
    """What a pre-pass may use: the run's training set (the sample-rate subset, without its training
    views), its single-view training transform and its evaluation transform, and the run's settings."""
    dataset: object                 # a ClassificationDataset (``.with_transform(t)``)
    train_transform: Callable       # one "image" view: RandomResizedCrop(scale 0.2–1) + flip
    eval_transform: Callable        # Resize → CenterCrop
    device: torch.device
    batch_size: int
    seed: int
    lr: float
    weight_decay: float
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    num_workers: int = 0
    progress: bool = False

    def loader(self, transform: Callable, batch_size: int | None = None, shuffle: bool = False,
               drop_last: bool = False, seed: int | None = None) -> DataLoader:
        """A loader of (image, label) over the training set with ``transform``; shuffling (and the
        workers' seeds) come from a generator seeded with ``seed`` (default: the run's seed)."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return DataLoader(self.dataset.with_transform(transform), batch_size=batch_size or self.batch_size,
                          shuffle=shuffle, drop_last=drop_last, num_workers=self.num_workers, generator=gen,
                          pin_memory=torch.device(self.device).type == "cuda")


class Method(nn.Module):
    name: str = ""
    view_kinds: tuple[str, ...] = ("image",)
    Settings: type = None   # a dataclass of the method's options
    needs_index: bool = False  # True: training_step also gets the batch's dataset indices (index=...)
    precision = None           # the run's engine.precision.Precision, set by the engine before each step

    def backward_part(self, loss: torch.Tensor) -> None:
        """Back-propagate a part of the loss inside ``training_step`` (scaled when the run uses fp16)."""
        if self.precision is not None:
            self.precision.backward(loss)
        else:
            loss.backward()

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

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor] | None:
        """One-off pre-pass before training; its result goes to ``set_prepared``. None: nothing to do."""
        return None

    def set_prepared(self, state: dict[str, torch.Tensor]) -> None:
        """Take the result of ``prepare`` (freshly computed or loaded from the run's cache)."""


def pooled(fmap: torch.Tensor) -> torch.Tensor:
    """The reference 'bottleneck': global average pool + flatten."""
    return fmap.mean((2, 3))


def copy_source_head(backbone, method: str) -> nn.Module:
    """A deep copy of the backbone's ImageNet classifier (Co-Tuning, LWF); a clear error without one."""
    if getattr(backbone, "source_head", None) is None:
        raise ValueError(f"method {method!r} needs the backbone's ImageNet 1000-way classifier (backbone.source_head), "
                         f"but {getattr(backbone, 'name', 'this backbone')} has none: it was built with "
                         "pretrained=False or from a checkpoint without one. Use ImageNet weights (pretrained=True).")
    return copy.deepcopy(backbone.source_head)
