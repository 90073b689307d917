"""One training step of the authors' code (``Contuning.forward`` in concept_tuning.py and the loss sum of
training.py's ``train``), transcribed statement by statement for the CPU, on the modules of a ctlib
Concept-Tuning model (a copy of it): query encoder ``encoder_q`` (backbone + head), front-door head
``frontdoor``, key encoder ``encoder_k``, queues ``queues``.

Deterministic where the reference draws at random: the IB noise ε is zero, the positive of each
Sinkhorn match is the top plan entry (the reference picks one of the top 3), and the MoCo batch
shuffle around each patch pass is left out (BN statistics do not depend on the order of a batch).
Everything else follows the reference: the order of the forwards and of the momentum update, BN
momentum 0.1 for the query forward and 0 for the query patch passes, nine patch passes (one per slot),
a deep copy of each encoder's head for the patch embeddings, per-sample Sinkhorn calls and enqueues
against clones of the queues, KLDivLoss(batchmean) on log-softmax, torch.distributions for the IB KL.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl
from torchvision.ops import roi_align

from reference_impl import sinkhorn_reference


def _set_momentum(module, value):                       # utils.fix_bn / utils.recover_bn
    for m in module.modules():
        if "BatchNorm" in m.__class__.__name__:
            m.momentum = value


def _classifier(encoder, x):                             # Classifier.forward → (y, h, f)
    f = encoder.backbone(x)
    h = f.mean((2, 3))
    return encoder.head(h), h, f


def _search_patches(model, feature_maps, preds, labels, geo, size):
    """Contuning._search_patches + generate_box, with the geometry of the ctlib model."""
    batch_size = feature_maps.size(0)
    model_output = preds.detach().cpu().numpy()
    label = labels.cpu().numpy()
    cls_weights = copy.deepcopy(model.encoder_k.head).weight.data
    f = feature_maps.clone().detach()
    H, W = f.shape[-2:]
    boxes, confusing_all = [], []
    for i in range(batch_size):
        atten = f[i]
        confusing = (-model_output[i]).argsort()[:model.settings.confusing + 1]
        confusing = np.delete(confusing, np.where(confusing == label[i]))[:model.settings.confusing]
        confusing_all.append(confusing)
        target_score = 3 * cls_weights[label[i]] - cls_weights[confusing[0]] - cls_weights[confusing[1]] \
            - cls_weights[confusing[2]]
        _, all_index = torch.topk(target_score, f.shape[1])
        maps = [torch.sum(atten[all_index[start:start + geo.slice_width]], dim=0)
                for start in np.arange(0, f.shape[1], geo.slice_stride)][:geo.num_patches]
        for amap in maps:
            peak = torch.argmax(amap)
            y = (peak // W) * geo.feature_stride
            x = (peak % W) * geo.feature_stride
            half = geo.box_size // 2
            boxes.append(torch.tensor([i, max(0, x - half), max(0, y - half), min(size, x + half),
                                       min(size, y + half)]))
    return torch.stack(boxes).float(), confusing_all


def _patch_features(encoder, images, boxes, geo):
    """Contuning.patch_features: one encoder pass per slot, a deep copy of the head, L2-normalised."""
    batch_size = images.size(0)
    patches = roi_align(images, boxes.to(images.dtype), output_size=(geo.box_size, geo.box_size), spatial_scale=1.0,
                        aligned=True)   # .to: the reference's float boxes, for a float64 check of ours
    patches = patches.reshape(batch_size, geo.num_patches, 3, geo.box_size, geo.box_size)
    class_cls = copy.deepcopy(encoder.head)
    emb = []
    for i in range(geo.num_patches):
        _, rep, _ = _classifier(encoder, patches[:, i].contiguous())
        emb.append(F.normalize(class_cls(rep), dim=1).unsqueeze(1))
    return torch.cat(emb, 1)


def _sinkhorn(x, y, pos, eps):
    """SinkhornDistance.forward: costs at the top plan entry (pos; deterministic) or the top 10 (neg)."""
    C, pi = sinkhorn_reference(x, y, eps)
    n = pi.size(0)
    pi = pi.reshape(n, -1)
    b = torch.topk(pi, 3 if pos else 10, dim=1).indices
    if pos:
        b = b[:, :1]
    return C.reshape(n, -1).gather(1, b).reshape(-1)


def reference_step(model, imgs, labels, epoch):
    """Forward and backward of one step on ``model`` (a ctlib ConceptTuning in train mode); returns the
    loss parts. Gradients are left in ``.grad`` as training.py leaves them before ``optimizer.step()``."""
    s, geo = model.settings, model.geometry
    enc_q, enc_k, fd = model.encoder_q, model.encoder_k, model.frontdoor
    K, T, batch_size = s.K, s.T, imgs[0].size(0)
    num_classes = model.num_classes

    _set_momentum(enc_q, 0.1)                                                    # recover_bn
    y_q, _, f_q = _classifier(enc_q, imgs[0])
    stats = fd.encoder(fd.attend(f_q).mean((2, 3)))                              # Classifier.IB
    mu = stats[:, :s.ib_dim]
    std = F.softplus(stats[:, s.ib_dim:] - 5, beta=1)
    ib_preds = fd.decoder(mu + torch.zeros_like(std) * std)
    z_q = F.normalize(y_q, dim=1)

    _set_momentum(enc_q, 0.0)                                                    # fix_bn
    y_q_2, _, feature_q = _classifier(enc_k, imgs[2])
    boxes_q, confusing_all = _search_patches(model, feature_q, y_q_2, labels, geo, imgs[2].shape[-1])
    z_q_p = _patch_features(enc_q, imgs[2], boxes_q, geo)

    with torch.no_grad():
        for param_q, param_k in zip(enc_q.parameters(), enc_k.parameters()):   # _momentum_update_key_encoder
            param_k.data = param_k.data * s.m + param_q.data * (1. - s.m)
        y_k, _, _ = _classifier(enc_k, imgs[1])
        z_k = F.normalize(y_k, dim=1)
        y_k_2, _, feature_k = _classifier(enc_k, imgs[3])
        boxes_k, _ = _search_patches(model, feature_k, y_k_2, labels, geo, imgs[3].shape[-1])
        z_k_p = _patch_features(enc_k, imgs[3], boxes_k, geo)

    q = model.queues
    logits_z_cur = torch.einsum("nc,nc->n", z_q, z_k).unsqueeze(-1)
    queue_z = q.queue_z.clone().detach()
    logits_cur_concept = 1.0 - _sinkhorn(z_q_p, z_k_p, True, s.sinkhorn_eps).unsqueeze(-1)
    queue_h = q.queue_h.clone().detach()
    pos_l, neg_l, pos_c, neg_c = [], [], [], []
    for i in range(batch_size):
        c = labels[i]
        pos_samples = queue_z[:, c, :]
        neg_samples = torch.cat([queue_z[:, 0:c, :], queue_z[:, c + 1:, :]], dim=1).flatten(start_dim=1)
        pos_l.append(torch.einsum("nc,ck->nk", z_q[i:i + 1], pos_samples))
        neg_l.append(torch.einsum("nc,ck->nk", z_q[i:i + 1], neg_samples))
        neg_samples_h = queue_h[confusing_all[i]].flatten(end_dim=1)
        pos_c.append(1. - _sinkhorn(z_q_p[i:i + 1], queue_h[c], True, s.sinkhorn_eps).unsqueeze(0))
        neg_c.append(1. - _sinkhorn(z_q_p[i:i + 1], neg_samples_h, False, s.sinkhorn_eps).unsqueeze(0))
        with torch.no_grad():                                                    # _dequeue_and_enqueue
            ptr = int(q.ptr[c])
            q.queue_z[:, c, ptr:ptr + 1] = z_k[i:i + 1].T
            q.queue_h[c, ptr:ptr + 1] = z_k_p[i:i + 1]
            q.ptr[c] = (ptr + 1) % K

    logits_z = nn.LogSoftmax(dim=1)(torch.cat([logits_z_cur, torch.cat(pos_l), torch.cat(neg_l)], 1) / T)
    logits_concept = nn.LogSoftmax(dim=1)(torch.cat([logits_cur_concept, torch.cat(pos_c), torch.cat(neg_c)], 1) / T)
    # dtype=: the reference's float32 targets, in the logits' dtype for a float64 check of ours
    labels_c = torch.zeros([batch_size, K * num_classes + 1], dtype=logits_z.dtype)
    labels_c[:, 0:K + 1].fill_(1.0 / (K + 1))
    labels_c_concept = torch.zeros([batch_size, (s.confusing * 10 + 1) * K + 1], dtype=logits_concept.dtype)
    labels_c_concept[:, 0:K + 1].fill_(1.0 / (K + 1))
    criterion = nn.KLDivLoss(reduction="batchmean")
    contrastive_loss = criterion(logits_z, labels_c)
    concept_loss = criterion(logits_concept, labels_c_concept)
    normal_prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(std)), 1)
    latent_prior = Independent(Normal(loc=mu, scale=torch.exp(std)), 1)
    ib_info_loss = torch.mean(kl.kl_divergence(latent_prior, normal_prior))

    # training.py
    beta_anneal = s.beta if epoch > s.start_epoch else 0.0
    cls_loss = F.cross_entropy(y_q, labels, label_smoothing=s.smoothing)
    ib_class_loss = F.cross_entropy(ib_preds, labels, label_smoothing=s.smoothing)
    loss = cls_loss + contrastive_loss * s.trade_off + concept_loss * beta_anneal + ib_class_loss \
        + s.infow * ib_info_loss
    loss.backward()
    return {"total": loss.item(), "cls": cls_loss.item(), "img": contrastive_loss.item(),
            "concept": concept_loss.item(), "ib_cls": ib_class_loss.item(), "ib_kl": ib_info_loss.item()}
