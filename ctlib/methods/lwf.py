"""LWF, Learning without Forgetting (TLlib lwf.py, BASELINES.md §2.9): distil the ImageNet head towards
source logits recorded before training.

Model: backbone → GAP → f; y_t = head_target(f) (new Linear, default init) and y_s = head_source(f),
a copy of the backbone's ImageNet classifier.

Pre-pass (``prepare``): the raw source logits Ŷ ∈ R^{N×S} of every training image, in dataset order,
from the initial model in eval mode. TLlib records them once with the TRAINING transform (one random
crop per image, ``teacher="recorded"``); ``teacher="recorded_eval"`` records them on the eval
transform instead. The engine passes each batch's dataset indices (``needs_index``) to look them up.

Loss: CE(y_t, t) + trade_off · (1/B) Σ_b KL(softmax(Ŷ_b / T) ‖ softmax(y_s,b / T)), no T² factor (TLlib).

Optimiser: backbone at lr·backbone_lr_mult, head_target at lr. TLlib leaves head_source out of the
optimiser (the line is commented out), so the old head stays at its ImageNet values
(``train_source_head=False``); ``train_source_head=True`` trains it at the backbone's lr, as the
original LwF trains the old head jointly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..validation import check_settings, choice, flag, real
from .base import Method, copy_source_head, pooled

TEACHERS = ("recorded", "recorded_eval")


@dataclass
class LWFSettings:
    trade_off: float = 4.0            # λ, weight of the distillation term
    T: float = 3.0                    # distillation temperature (no T² factor, as TLlib)
    train_source_head: bool = False   # TLlib: False (old head frozen); True: trained at the backbone's lr
    teacher: str = "recorded"         # "recorded": logits of one training-transform view (TLlib);
                                      # "recorded_eval": logits of the eval-transformed image

    def __post_init__(self):
        check_settings("lwf", [real("trade_off", self.trade_off, 0), real("T", self.T, 0, lo_open=True),
                               flag("train_source_head", self.train_source_head),
                               choice("teacher", self.teacher, TEACHERS)])


class LWF(Method):
    name = "lwf"
    view_kinds = ("image",)
    Settings = LWFSettings
    needs_index = True

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: LWFSettings | None = None):
        super().__init__()
        self.settings = settings or LWFSettings()
        self.backbone = backbone
        self.head_source = copy_source_head(backbone, self.name)
        if not self.settings.train_source_head:
            self.head_source.requires_grad_(False)   # not optimised; gradients still reach the backbone
        self.head_target = nn.Linear(backbone.channels, num_classes)   # PyTorch default init, as TLlib
        # the pre-pass result, one row per training image; not in the state dict (the engine keeps it
        # in the run's prepare.pt)
        self.register_buffer("recorded", torch.empty(0), persistent=False)

    def param_groups(self, lr, backbone_lr_mult):
        groups = [{"params": list(self.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                  {"params": list(self.head_target.parameters()), "lr": lr}]
        if self.settings.train_source_head:
            groups.insert(1, {"params": list(self.head_source.parameters()), "lr": lr * backbone_lr_mult})
        return groups

    @torch.no_grad()
    def prepare(self, ctx):
        transform = ctx.train_transform if self.settings.teacher == "recorded" else ctx.eval_transform
        was = self.training
        self.eval()
        logits = []
        try:
            loader = ctx.loader(transform, ctx.batch_size, shuffle=False, drop_last=False)
            for images, _ in tqdm(loader, desc="lwf teacher logits", disable=not ctx.progress, leave=False):
                logits.append(self.head_source(pooled(self.backbone(images.to(ctx.device)))).float())
        finally:
            self.train(was)
        return {"recorded": torch.cat(logits)}

    def set_prepared(self, state):
        self.recorded = state["recorded"].to(self.head_target.weight.device)

    def teacher_logits(self, index: torch.Tensor) -> torch.Tensor:
        if self.recorded.numel() == 0:
            raise RuntimeError("lwf: the teacher logits have not been recorded (call set_prepared(prepare(ctx)))")
        return self.recorded[index.to(self.recorded.device)]

    def training_step(self, views, labels, epoch, index=None):
        if index is None:
            raise ValueError("lwf needs the batch's dataset indices: training_step(views, labels, epoch, index=...)")
        teacher = self.teacher_logits(index)
        f = pooled(self.backbone(views[0]))
        y_s, y_t = self.head_source(f), self.head_target(f)
        cls = F.cross_entropy(y_t, labels)
        T = self.settings.T
        kd = F.kl_div(F.log_softmax(y_s / T, dim=1), F.softmax(teacher / T, dim=1), reduction="batchmean")
        loss = cls + self.settings.trade_off * kd
        return {"loss": loss, "cls": cls.item(), "kd": kd.item(),
                "acc": (y_t.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def heads(self, images):
        return {"main": self.head_target(pooled(self.backbone(images)))}
