"""Co-Tuning (TLlib co_tuning.py, BASELINES.md §2.7): also train the ImageNet head towards p(y_s | y_t).

Model: backbone → GAP → f; y_t = head_target(f) (new Linear, default init) and y_s = head_source(f),
a trainable deep copy of the backbone's ImageNet classifier.

Pre-pass (``prepare``): the relationship matrix R ∈ R^{C×S}, R[c] = mean over the training images of
class c of softmax(head_source(f)), computed once with the initial model in eval mode on the
eval-transformed training set (TLlib's "direct approach"), cached by the engine with the run.

Loss: CE(y_t, t) + trade_off · (1/B) Σ_b −Σ_j R[t_b, j] · log softmax(y_s,b)_j.

Optimiser: backbone at lr·backbone_lr_mult, head_source at lr·source_lr_mult (TLlib 0.1×),
head_target at lr.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..validation import check_settings, real
from .base import Method, copy_source_head, pooled


@dataclass
class CoTuningSettings:
    trade_off: float = 2.3        # λ, weight of the source-head soft-label cross-entropy
    source_lr_mult: float = 0.1   # head_source's lr = lr · source_lr_mult (TLlib: 0.1·lr with --finetune)
    smoothing: float = 0.0        # label smoothing of the target cross-entropy (TLlib: none)

    def __post_init__(self):
        check_settings("co_tuning", [real("trade_off", self.trade_off, 0),
                                     real("source_lr_mult", self.source_lr_mult, 0),
                                     real("smoothing", self.smoothing, 0, 1, hi_open=True)])


@torch.no_grad()
def class_relationship(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """R[c] = mean of ``probs`` over the rows labelled c. A class without images gets a zero row (TLlib:
    NaN, or no row at all); it is never looked up, since training labels come from the same images."""
    sums = torch.zeros(num_classes, probs.shape[1], dtype=torch.float64, device=probs.device)
    sums.index_add_(0, labels, probs.double())
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).double()
    return (sums / counts[:, None]).float()


class CoTuning(Method):
    name = "co_tuning"
    view_kinds = ("image",)
    Settings = CoTuningSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: CoTuningSettings | None = None):
        super().__init__()
        self.settings = settings or CoTuningSettings()
        self.backbone = backbone
        self.head_source = copy_source_head(backbone, self.name)
        self.head_target = nn.Linear(backbone.channels, num_classes)   # PyTorch default init, as TLlib
        self.num_classes = num_classes
        # the pre-pass result; not in the state dict (the engine keeps it in the run's prepare.pt)
        self.register_buffer("relationship", torch.empty(0), persistent=False)

    def param_groups(self, lr, backbone_lr_mult):
        return [{"params": list(self.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                {"params": list(self.head_source.parameters()), "lr": lr * self.settings.source_lr_mult},
                {"params": list(self.head_target.parameters()), "lr": lr}]

    @torch.no_grad()
    def prepare(self, ctx):
        was = self.training
        self.eval()
        probs, labels = [], []
        try:
            loader = ctx.loader(ctx.eval_transform, ctx.batch_size, shuffle=False, drop_last=False)
            for images, y in tqdm(loader, desc="co_tuning relationship", disable=not ctx.progress, leave=False):
                logits = self.head_source(pooled(self.backbone(images.to(ctx.device))))
                probs.append(F.softmax(logits.float(), dim=1))
                labels.append(y.to(ctx.device))
        finally:
            self.train(was)
        return {"relationship": class_relationship(torch.cat(probs), torch.cat(labels), self.num_classes)}

    def set_prepared(self, state):
        self.relationship = state["relationship"].to(self.head_target.weight.device)

    def training_step(self, views, labels, epoch):
        if self.relationship.numel() == 0:
            raise RuntimeError("co_tuning: the relationship pre-pass has not run (call set_prepared(prepare(ctx)))")
        f = pooled(self.backbone(views[0]))
        y_s, y_t = self.head_source(f), self.head_target(f)
        cls = F.cross_entropy(y_t, labels, label_smoothing=self.settings.smoothing)
        q = self.relationship[labels]
        src = -(q * F.log_softmax(y_s, dim=1)).sum(1).mean()
        loss = cls + self.settings.trade_off * src
        return {"loss": loss, "cls": cls.item(), "co_tuning": src.item(),
                "acc": (y_t.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def heads(self, images):
        return {"main": self.head_target(pooled(self.backbone(images)))}
