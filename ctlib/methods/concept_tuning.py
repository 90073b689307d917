"""Concept-Tuning (METHOD.md §2): main head + front-door/IB head on a query encoder, a momentum key
encoder, class queues, image-level and concept-level contrastive losses.

One step, as the reference orders it (§2.10), with the parts of the loss back-propagated one after
the other so that the concept branch's activations are freed before the full-image branch runs
(the gradients add up to those of the summed loss; query parameters do not change within a step):
1. key encoder (not yet updated) on v2 → query-side boxes and confusing classes;
2. momentum update of the key encoder; key forwards on v1 (z_k) and v3 (key-side boxes, patch keys);
3. query encoder on the crops of v2 with BN momentum 0 → concept loss (β·L_concept) → backward;
4. query forward on v0 → CE + λ·L_img + CE_IB + infow·KL_IB → backward;
5. enqueue the batch's keys (every sample saw the queues as they were at the start of the step).

``concept_features="feature_map"`` is the fast concept mode, a departure labelled as such everywhere (the
record's protocol note, tables): patch features pooled from the full-image feature maps instead of crops
encoded again, two views instead of four, one key forward (``_fast_step``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..concept import (PATCH_FORWARDS, ClassQueues, FrontDoorHead, PatchGeometry, check_confusing, concept_contrastive_loss,
                       concept_logits, crop_patches, embed_patches, ib_kl, image_contrastive_loss, pool_patches,
                       search_patches)
from ..concept.frontdoor import AGGREGATIONS, ATTENTIONS, KL_FORMS
from ..concept.patches import ANCHORS
from ..validation import check_settings, choice, flag, integer, is_int, real
from .base import Method, pooled

CONCEPT_FEATURES = ("crops", "feature_map")


@dataclass
class ConceptTuningSettings:
    K: int = 40                    # queue length per class
    m: float = 0.999               # key-encoder momentum
    T: float = 0.07                # temperature of both contrastive losses
    trade_off: float = 1.0         # λ, image-level contrastive loss
    beta: float = 1.0              # concept-level loss weight (reference --beta-anneal) ...
    start_epoch: int = -1          # ... applied for epochs > start_epoch (reference --start)
    confusing: int = 100           # confusable classes used as concept negatives, 3..C-1
    ib_dim: int = 512
    infow: float = 5e-3            # weight of the IB KL term
    smoothing: float = 0.0         # label smoothing of both cross-entropies
    aggregation: str = "sum"       # front-door attention: "sum" (code) or "concat" (paper caption)
    kl_form: str = "code"          # IB KL with std exp(σ) ("code") or σ ("textbook")
    eval_sample_ib: bool = False   # IB head samples ε at evaluation (reference) instead of using μ
    fused_channel_attention: bool = True  # channel attention without D×D matrices (same values); False: reference form
    pooled_position_attention: bool = True  # position attention's spatial mean without its map (same values);
                                            # False: the map, then its mean (reference form)
    anchor: str = "corner"         # box anchor at the peak cell's top-left pixel (reference) or "center"
    num_patches: int = 9
    slice_width: int | None = None   # default: 30 at 2048 channels, scaled
    slice_stride: int | None = None  # default: 250 at 2048 channels, scaled
    box_size: int | None = None      # default: 64 px at 224 px input, scaled
    concept_features: str = "crops"  # "crops": each concept box cropped and encoded again (the paper's method);
                                     # "feature_map": the fast mode, a departure: features pooled (RoI-align)
                                     # from the full-image forward's feature map, two views, one key forward
    patch_forward: str = "grouped"   # "grouped": all crops in one forward, BN statistics per slot (the
                                     # reference's numbers); "per_slot": one forward per slot (the reference's
                                     # structure); "batched": one forward, BN statistics over all crops
    bn_momentum: float | None = 0.1  # query-encoder BN momentum outside the patch pass: the reference's
                                     # recover_bn sets 0.1 every step; None keeps the backbone's own
    sinkhorn_eps: float = 0.01
    sinkhorn_iters: int = 200
    sinkhorn_tol: float = 1e-3
    pos_top: int = 3
    neg_top: int = 10
    # ablation switches (each part switched off is not computed at all)
    concept_loss: bool = True      # False: no concept-level loss (no patch search, crops, Sinkhorn, queue_h)
    image_loss: bool = True        # False: no image-level loss (no key forward on v1, no queue_z)
    frontdoor: bool = True         # False: no front-door head (the main head alone; no IB losses)
    bottleneck: bool = True        # False: attention features straight into the front-door classifier
    attention: str = "both"        # front-door attention modules: "both", "channel" or "position"

    def __post_init__(self):
        # confusing <= num_classes - 1 and the slices' fit in the backbone's channels are checked at build
        pairs = self.num_patches ** 2 if is_int(self.num_patches) and self.num_patches >= 1 else None

        def top(name, v):   # a count of the transport plan's num_patches² entries
            rule = "an integer in [1, num_patches²" + (f" = {pairs}]" if pairs else "]")
            return name, v, is_int(v) and 1 <= v <= (pairs or v), rule
        check_settings("Concept-Tuning", [
            integer("K", self.K, 1), real("m", self.m, 0, 1, hi_open=True), real("T", self.T, 0, lo_open=True),
            real("trade_off", self.trade_off, 0), real("beta", self.beta, 0),
            integer("start_epoch", self.start_epoch, -1), integer("confusing", self.confusing, 3),
            integer("ib_dim", self.ib_dim, 1), real("infow", self.infow, 0),
            real("smoothing", self.smoothing, 0, 1, hi_open=True),
            choice("aggregation", self.aggregation, AGGREGATIONS), choice("kl_form", self.kl_form, KL_FORMS),
            flag("eval_sample_ib", self.eval_sample_ib), flag("fused_channel_attention", self.fused_channel_attention),
            flag("pooled_position_attention", self.pooled_position_attention),
            choice("anchor", self.anchor, ANCHORS), integer("num_patches", self.num_patches, 1),
            integer("slice_width", self.slice_width, 1, none=True),
            integer("slice_stride", self.slice_stride, 1, none=True),
            integer("box_size", self.box_size, 1, none=True),
            choice("concept_features", self.concept_features, CONCEPT_FEATURES),
            choice("patch_forward", self.patch_forward, PATCH_FORWARDS),
            real("bn_momentum", self.bn_momentum, 0, 1, none=True),
            real("sinkhorn_eps", self.sinkhorn_eps, 0, lo_open=True), integer("sinkhorn_iters", self.sinkhorn_iters, 1),
            real("sinkhorn_tol", self.sinkhorn_tol, 0), top("pos_top", self.pos_top), top("neg_top", self.neg_top),
            flag("concept_loss", self.concept_loss), flag("image_loss", self.image_loss),
            flag("frontdoor", self.frontdoor), flag("bottleneck", self.bottleneck),
            choice("attention", self.attention, ATTENTIONS)])


class _Encoder(nn.Module):
    """Backbone + main head (GAP + Linear, N(0, 0.01²) weights, zero bias)."""

    def __init__(self, backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels, num_classes)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        f = self.backbone(x)
        return self.head(pooled(f)), f


def _set_bn_momentum(module: nn.Module, momentum: float | None) -> list[float | None]:
    """Set every BN layer's momentum; returns the previous values (for restoring)."""
    old = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            old.append(m.momentum)
            m.momentum = momentum
    return old


def _restore_bn_momentum(module: nn.Module, values: list[float | None]) -> None:
    it = iter(values)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = next(it)


class ConceptTuning(Method):
    name = "concept_tuning"
    view_kinds = ("image", "image", "patch", "patch")
    Settings = ConceptTuningSettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224,
                 settings: ConceptTuningSettings | None = None):
        super().__init__()
        s = self.settings = settings or ConceptTuningSettings()
        if s.concept_loss:
            check_confusing(s.confusing, num_classes)
        if s.patch_forward not in PATCH_FORWARDS:
            raise ValueError(f"unknown patch_forward {s.patch_forward!r}: choose one of {list(PATCH_FORWARDS)}")
        self.num_classes = num_classes
        if s.concept_features == "feature_map":
            self.view_kinds = ("image", "image")        # v0 for the query, v1 for the key: no patch views
        self.geometry = PatchGeometry.derive(backbone.channels, image_size, backbone.stride, s.num_patches,
                                             s.anchor, s.slice_width, s.slice_stride, s.box_size)
        self.encoder_q = _Encoder(backbone, num_classes)
        self.frontdoor = (FrontDoorHead(backbone.channels, num_classes, s.ib_dim, s.aggregation, s.eval_sample_ib,
                                        s.fused_channel_attention, s.attention, s.bottleneck, s.pooled_position_attention)
                          if s.frontdoor else None)
        self.encoder_k = self.queues = None
        if s.concept_loss or s.image_loss:      # the key encoder and queues serve the two contrastive losses
            self.encoder_k = copy.deepcopy(self.encoder_q)
            for p in self.encoder_k.parameters():
                p.requires_grad_(False)
            self.queues = ClassQueues(num_classes, s.K, num_classes, self.geometry.num_patches, image=s.image_loss,
                                      concept=s.concept_loss)
        if s.bn_momentum is not None:
            _set_bn_momentum(self.encoder_q, s.bn_momentum)

    # ---- optimiser -------------------------------------------------------------------------------
    def param_groups(self, lr, backbone_lr_mult):
        q = self.encoder_q
        heads = list(q.head.parameters()) + (list(self.frontdoor.parameters()) if self.frontdoor else [])
        return [{"params": list(q.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                {"params": heads, "lr": lr}]

    # ---- pieces ----------------------------------------------------------------------------------
    @torch.no_grad()
    def momentum_update(self) -> None:
        q = [p.detach() for p in self.encoder_q.parameters()]
        k = list(self.encoder_k.parameters())
        torch._foreach_lerp_(k, q, 1.0 - self.settings.m)

    def _search(self, images, labels):
        """Patch search on ``images`` with the key encoder (its logits, feature map and head)."""
        with torch.no_grad():
            logits, fmap = self.encoder_k(images)
        return search_patches(fmap, logits, labels, self.encoder_k.head.weight, self.geometry,
                              self.settings.confusing, tuple(images.shape[-2:]))

    def _embed(self, encoder: _Encoder, images, boxes):
        crops = crop_patches(images, boxes, self.geometry)
        return embed_patches(lambda x: pooled(encoder.backbone(x)), encoder.head.weight, encoder.head.bias,
                             crops, self.settings.patch_forward, encoder.backbone)

    def concept_weight(self, epoch: int) -> float:
        return self.settings.beta if epoch > self.settings.start_epoch else 0.0

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, views, labels, epoch):
        if self.settings.concept_features == "feature_map":
            return self._fast_step(views, labels, epoch)
        s = self.settings
        v0, v1, v2, v3 = views
        beta = self.concept_weight(epoch)
        if s.concept_loss:
            search_q = self._search(v2, labels)                  # key encoder before its update
        if self.encoder_k is not None:
            with torch.no_grad():
                self.momentum_update()
                if s.image_loss:
                    z_k = F.normalize(self.encoder_k(v1)[0], dim=1)
                if s.concept_loss:
                    search_k = self._search(v3, labels)
                    e_k = self._embed(self.encoder_k, v3, search_k.boxes)
        parts = {}
        if s.concept_loss:
            # query encoder on the crops of v2, BN batch statistics, running statistics untouched
            bn = _set_bn_momentum(self.encoder_q, 0.0)
            try:
                e_q = self._embed(self.encoder_q, v2, search_q.boxes)
            finally:
                _restore_bn_momentum(self.encoder_q, bn)
            loss_concept, iters = self._concept_loss(e_q, e_k, self.queues.queue_h, labels, search_q.confusing)
            if beta and loss_concept.requires_grad:
                self.backward_part(beta * loss_concept)   # frees the concept branch before the full-image one
            parts.update(concept=loss_concept.item(), sinkhorn_iters=iters)

        # full-image branch
        y_q, fmap = self.encoder_q(v0)
        rest = self._full_image_losses(y_q, fmap, labels, z_k if s.image_loss else None, parts)
        if self.queues is not None:
            self.queues.enqueue(z_k if s.image_loss else None, e_k if s.concept_loss else None, labels)
        total = rest.item() + (beta * parts["concept"] if s.concept_loss else 0.0)
        return {"loss": rest, "total": total, **parts}

    def _concept_loss(self, e_q, e_k, queue_h, labels, confusing):
        """L_concept of the patch embeddings (in float32 under mixed precision), and Sinkhorn's iterations."""
        s = self.settings
        dtype = torch.promote_types(e_q.dtype, torch.float32)     # half → float32; float32, float64 as they are
        with torch.autocast(e_q.device.type, enabled=False):
            c_logits, iters = concept_logits(e_q.to(dtype), e_k.to(dtype), queue_h, labels, confusing,
                                             s.sinkhorn_eps, s.sinkhorn_iters, s.sinkhorn_tol, s.pos_top, s.neg_top)
            return concept_contrastive_loss(c_logits, s.K, s.T), iters

    def _full_image_losses(self, y_q, fmap, labels, z_k, parts: dict):
        """CE + λ·L_img + CE_IB + infow·KL_IB of the query's full-image forward (``parts`` gets their values)."""
        s = self.settings
        loss_cls = F.cross_entropy(y_q, labels, label_smoothing=s.smoothing)
        rest = loss_cls
        parts.update(cls=loss_cls.item(), acc=(y_q.argmax(1) == labels).float().mean().item())
        if s.image_loss:
            # back-propagated after the enqueue below: keep the queue it saw
            loss_img = image_contrastive_loss(F.normalize(y_q, dim=1), z_k, self.queues.queue_z.clone(), labels, s.T)
            rest = rest + s.trade_off * loss_img
            parts["img"] = loss_img.item()
        if self.frontdoor is not None:
            ib_logits, mu, sigma = self.frontdoor(fmap)
            loss_ib = F.cross_entropy(ib_logits, labels, label_smoothing=s.smoothing)
            rest = rest + loss_ib
            parts.update(ib_cls=loss_ib.item(), ib_acc=(ib_logits.argmax(1) == labels).float().mean().item())
            if mu is not None:
                loss_kl = ib_kl(mu, sigma, s.kl_form)
                rest = rest + s.infow * loss_kl
                parts["ib_kl"] = loss_kl.item()
        return rest

    def _pooled_embeddings(self, head: nn.Linear, fmap, boxes):
        """Fast mode's (B, P, C) patch embeddings: features pooled from ``fmap`` in the boxes, the head with
        detached weights, L2-normalised (as ``embed_patches`` does for crops)."""
        h = pool_patches(fmap, boxes, self.geometry)
        return F.normalize(F.linear(h, head.weight.detach(), head.bias.detach()), dim=-1)

    def _fast_step(self, views, labels, epoch):
        """The fast concept mode (``concept_features="feature_map"``), a departure from the paper's method:
        two views, no crops. The key encoder (after its momentum update) runs once, on v1: its logits give
        z_k, its feature map the key-side boxes and patch embeddings. The query's full-image forward on v0
        gives the query-side boxes (searched with the query's own detached logits, feature map and head)
        and patch embeddings pooled from its feature map. One backward of the summed loss."""
        s = self.settings
        v0, v1 = views
        beta = self.concept_weight(epoch)
        parts = {}
        if self.encoder_k is not None:
            with torch.no_grad():
                self.momentum_update()
                y_k, fmap_k = self.encoder_k(v1)
                z_k = F.normalize(y_k, dim=1)
                if s.concept_loss:
                    search_k = search_patches(fmap_k, y_k, labels, self.encoder_k.head.weight, self.geometry,
                                              s.confusing, tuple(v1.shape[-2:]))
                    e_k = self._pooled_embeddings(self.encoder_k.head, fmap_k, search_k.boxes)
        y_q, fmap = self.encoder_q(v0)
        rest = self._full_image_losses(y_q, fmap, labels, z_k if s.image_loss else None, parts)
        if s.concept_loss:
            search_q = search_patches(fmap.detach(), y_q.detach(), labels, self.encoder_q.head.weight, self.geometry,
                                      s.confusing, tuple(v0.shape[-2:]))
            e_q = self._pooled_embeddings(self.encoder_q.head, fmap, search_q.boxes)
            # back-propagated after the enqueue below: keep the queue it saw
            loss_concept, iters = self._concept_loss(e_q, e_k, self.queues.queue_h.clone(), labels, search_q.confusing)
            parts.update(concept=loss_concept.item(), sinkhorn_iters=iters)
            if beta:
                rest = rest + beta * loss_concept
        if self.queues is not None:
            self.queues.enqueue(z_k if s.image_loss else None, e_k if s.concept_loss else None, labels)
        return {"loss": rest, "total": rest.item(), **parts}

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def heads(self, images):
        y, fmap = self.encoder_q(images)
        if self.frontdoor is None:
            return {"main": y}
        return {"main": y, "ib": self.frontdoor(fmap)[0]}

    def protocol_note(self):
        notes = []
        if self.settings.concept_features == "feature_map":
            notes.append("FAST CONCEPT MODE (concept_features='feature_map'): patch features pooled from the feature "
                         "map, not the paper's method")
        if self.frontdoor is not None and not self.settings.eval_sample_ib:
            notes.append("IB head evaluated with its mean μ; the authors' code samples ε at evaluation "
                         "(eval_sample_ib=True reproduces it)")
        return "; ".join(notes) or None

    @torch.no_grad()
    def find_concepts(self, images, labels):
        """Concept boxes the key encoder finds on ``images`` (for display): a PatchSearch. As in
        training, the key encoder uses batch statistics; its running statistics and the global random
        state are left alone, and any training-mode randomness (drop-connect) is seeded: same images,
        same boxes."""
        if self.encoder_k is None:
            raise ValueError("find_concepts needs the key encoder, which this ablation (no contrastive loss) lacks")
        was = self.encoder_k.training
        self.encoder_k.train()
        bn = _set_bn_momentum(self.encoder_k, 0.0)
        try:
            with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                torch.manual_seed(0)
                return self._search(images, labels)
        finally:
            _restore_bn_momentum(self.encoder_k, bn)
            self.encoder_k.train(was)
