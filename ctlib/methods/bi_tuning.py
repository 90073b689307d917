"""Bi-Tuning (BASELINES.md §2.10; TLlib ``bi_tuning.py`` and ``tllib/regularization/bi_tuning.py``).

Query encoder: backbone → GAP → h (D); head = Linear(D, C) with N(0, 0.01²) weights and zero bias;
projector = Linear(D, projection_dim), default init. It gives y = head(h), z = normalize(projector(h))
and ĥ = normalize([h; 1]). The key encoder is a copy whose parameters follow the query's by EMA (m) and
get no gradient; it always runs in training mode (BN batch statistics), as TLlib's. Queues (buffers,
initially N(0, 1) normalised over the feature dim): Q_h (D+1 × C × K) of key ĥ's, Q_z (proj × C × K)
of key z's, one pointer per class.

One step on the two views (x_q, x_k) with labels t:
1. query forward on x_q → y_q, z_q, ĥ_q;
2. EMA of the key parameters (not buffers), then the key forward on x_k → z_k, ĥ_k (no gradient);
3. projection contrast against Q_z as it was BEFORE this step's enqueue: sample i of class c has the
   logits [z_q,i·z_k,i, z_q,i·Q_z[:, c, :], z_q,i·Q_z[:, c', :] for c' ≠ c] / T, the first 1 + K positive;
4. enqueue sample by sample in batch order (class c's pointer advances by one mod K per sample; a class
   seen more than K times overwrites its own earlier writes), done in one vectorised write;
5. classifier contrast against Q_h AFTER the enqueue (TLlib's asymmetric snapshots, BASELINES.md quirk
   13; the batch's own keys are among the entries): with prototypes w̃_c = normalize([W_c; b_c]) from
   the DETACHED head, sample i of class c has the logits [ĥ_q,i·w̃_c, Q_h[:, c, :]·w̃_c,
   Q_h[:, c', :]·w̃_c for c' ≠ c] / T, the first 1 + K positive. Only ĥ_q carries a gradient;
6. L = CE(y_q, t) + λ (L_z + L_y), each L = batch mean of KL(π ‖ softmax(logits)), π uniform on the
   K + 1 positives (TLlib's ``KLDivLoss(batchmean)``; the order of the negatives does not matter).
Evaluation uses the query head only; the key encoder, projector and queues are training state (buffers
and submodules, so a resumed run continues exactly).

Departures from TLlib: the batch and the queues are processed without Python loops and the queues stay
on the model's device (TLlib keeps them on the CPU and copies them every step); ``projection_dim``
works for any value (TLlib's key encoder is always built with 128 and crashes otherwise);
``--pretrained-fc``, which loads nothing in TLlib, does not exist: the projector is always new. The
projector trains at ``lr * projector_lr_mult`` (TLlib: the backbone's 0.1×, with ``--finetune``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..concept.queues import sequential_slots
from ..validation import check_settings, integer, real
from .base import Method, pooled


@dataclass
class BiTuningSettings:
    K: int = 40                      # queue length per class
    m: float = 0.999                 # key-encoder momentum
    T: float = 0.07                  # temperature of both contrasts
    trade_off: float = 1.0           # λ
    projection_dim: int = 128        # projector output (TLlib: only 128 works)
    projector_lr_mult: float = 0.1   # projector lr = lr * this (TLlib: the backbone's 0.1x)

    def __post_init__(self):
        check_settings("bi_tuning", [integer("K", self.K, 1), real("m", self.m, 0, 1, hi_open=True),
                                     real("T", self.T, 0, lo_open=True), real("trade_off", self.trade_off, 0),
                                     integer("projection_dim", self.projection_dim, 1),
                                     real("projector_lr_mult", self.projector_lr_mult, 0)])


class _Encoder(nn.Module):
    def __init__(self, backbone, num_classes: int, projection_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels, num_classes)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)
        self.projector = nn.Linear(backbone.channels, projection_dim)

    def forward(self, x):
        """(y, z, ĥ): logits, normalised projection, normalised [h; 1]."""
        h = pooled(self.backbone(x))
        z = F.normalize(self.projector(h), dim=1)
        hn = F.normalize(torch.cat([h, h.new_ones(h.shape[0], 1)], 1), dim=1)
        return self.head(h), z, hn


def class_contrast(current: torch.Tensor, sims: torch.Tensor, labels: torch.Tensor, T: float) -> torch.Tensor:
    """Batch mean of KL(π ‖ softmax(logits_i / T)) for the logits [current_i, sims_i[c_i, :],
    sims_i[c', :] for c' ≠ c_i], π uniform on the first 1 + K. current: (B,); sims: (B, C, K)."""
    B, C, K = sims.shape
    logits = torch.cat([current[:, None], sims.reshape(B, C * K)], 1) / T      # every entry once
    own = sims[torch.arange(B, device=sims.device), labels] / T                 # (B, K)
    positives = torch.cat([logits[:, :1], own], 1)
    return (torch.logsumexp(logits, 1) - positives.mean(1) - math.log(K + 1)).mean()


class BiTuning(Method):
    name = "bi_tuning"
    view_kinds = ("image", "image")
    Settings = BiTuningSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: BiTuningSettings | None = None):
        super().__init__()
        s = self.settings = settings or BiTuningSettings()
        self.num_classes = num_classes
        self.encoder_q = _Encoder(backbone, num_classes, s.projection_dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        D, C, K = backbone.channels, num_classes, s.K
        self.register_buffer("queue_h", F.normalize(torch.randn(D + 1, C, K), dim=0))
        self.register_buffer("queue_z", F.normalize(torch.randn(s.projection_dim, C, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(C, dtype=torch.long))

    def param_groups(self, lr, backbone_lr_mult):
        q = self.encoder_q
        return [{"params": list(q.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                {"params": list(q.head.parameters()), "lr": lr},
                {"params": list(q.projector.parameters()), "lr": lr * self.settings.projector_lr_mult}]

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder_k.train(mode)
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_lerp_(list(self.encoder_k.parameters()), q, 1.0 - self.settings.m)

    @torch.no_grad()
    def enqueue(self, hn_k: torch.Tensor, z_k: torch.Tensor, labels: torch.Tensor) -> None:
        keep, pos, new_ptr = sequential_slots(labels, self.queue_ptr, self.settings.K, self.num_classes)
        lab, pos = labels[keep], pos[keep]
        self.queue_h[:, lab, pos] = hn_k[keep].T.to(self.queue_h.dtype)
        self.queue_z[:, lab, pos] = z_k[keep].T.to(self.queue_z.dtype)
        self.queue_ptr.copy_(new_ptr)

    def prototypes(self) -> torch.Tensor:
        """w̃ (C × D+1): the detached head's [W_c; b_c], normalised."""
        head = self.encoder_q.head
        return F.normalize(torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1), dim=1)

    def training_step(self, views, labels, epoch):
        s = self.settings
        x_q, x_k = views
        y_q, z_q, hn_q = self.encoder_q(x_q)
        with torch.no_grad():
            self.momentum_update()
            _, z_k, hn_k = self.encoder_k(x_k)

        # projection contrast: the queue before this step's enqueue
        sims_z = torch.einsum("bd,dck->bck", z_q, self.queue_z.clone())
        loss_z = class_contrast((z_q * z_k).sum(1), sims_z, labels, s.T)

        self.enqueue(hn_k, z_k, labels)

        # classifier contrast: the queue after the enqueue, anchored on the sample's class prototype
        w = self.prototypes()[labels]                                   # (B, D+1), no gradient
        with torch.no_grad():
            sims_y = torch.einsum("bd,dck->bck", w, self.queue_h)
        loss_y = class_contrast((hn_q * w).sum(1), sims_y, labels, s.T)

        cls = F.cross_entropy(y_q, labels)
        loss = cls + s.trade_off * (loss_z + loss_y)
        return {"loss": loss, "cls": cls.item(), "contrast_z": loss_z.item(), "contrast_y": loss_y.item(),
                "acc": (y_q.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def heads(self, images):
        q = self.encoder_q
        return {"main": q.head(pooled(q.backbone(images)))}
