"""Contrastive losses of METHOD.md §2.5–2.6: KL from a uniform target over the positives to the
softmax of the logits (the reference's ``KLDivLoss(batchmean)``), image level and concept level."""
from __future__ import annotations

import math

import torch

from .sinkhorn import select_costs, sinkhorn_log


def kl_uniform_positives(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(p ‖ softmax(logits)), p uniform over the entries where ``pos_mask`` is true
    (the same number in every row)."""
    npos = pos_mask.sum(1)
    pos_mean = (logits * pos_mask).sum(1) / npos
    return (torch.logsumexp(logits, 1) - pos_mean - torch.log(npos.to(logits.dtype))).mean()


def kl_first_positives(logits: torch.Tensor, num_pos: int) -> torch.Tensor:
    """As ``kl_uniform_positives`` with the first ``num_pos`` columns positive."""
    return (torch.logsumexp(logits, 1) - logits[:, :num_pos].mean(1) - math.log(num_pos)).mean()


def image_contrastive_loss(z_q: torch.Tensor, z_k: torch.Tensor, queue_z: torch.Tensor, labels: torch.Tensor,
                           T: float) -> torch.Tensor:
    """Logits [z_q·z_k, z_q·queue of own class (K), z_q·queue of every other class] / T; positives are
    the first 1 + K. z_q, z_k: (B, dim) normalised; queue_z: (dim, C, K)."""
    D, C, K = queue_z.shape
    sims = z_q @ queue_z.detach().reshape(D, C * K)                       # (B, C·K), class-major
    logits = torch.cat([(z_q * z_k.detach()).sum(1, keepdim=True), sims], 1) / T
    cls = torch.arange(C * K, device=z_q.device) // K
    pos_mask = torch.cat([torch.ones_like(labels[:, None], dtype=torch.bool), cls[None] == labels[:, None]], 1)
    return kl_uniform_positives(logits, pos_mask)


def concept_logits(e_q: torch.Tensor, e_k: torch.Tensor, queue_h: torch.Tensor, labels: torch.Tensor,
                   conf: torch.Tensor, eps: float = 0.01, max_iter: int = 200, tol: float = 1e-3,
                   pos_top: int = 3, neg_top: int = 10, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, int]:
    """Concept-level similarities (B, 1 + K + neg_top·n_conf·K), positives first:
    1 − OT-matched cost of the sample's own key set (one of the top-``pos_top`` plan entries at random),
    of the K queued sets of its class (likewise), and of the K queued sets of each confusing class
    (the ``neg_top`` top plan entries each). Costs are 1 − cosine between patch embeddings.

    e_q, e_k: (B, P, dim); queue_h: (C, K, P, dim); conf: (B, n_conf). Returns (logits, sinkhorn iterations).
    """
    B, P, D = e_q.shape
    C, K = queue_h.shape[:2]
    n_conf = conf.shape[1]
    dev = e_q.device
    cost_cur = 1 - e_q @ e_k.detach().transpose(1, 2)                                   # (B, P, P)
    # every query patch against every queued patch: (B, P, C, K, P) → (B, C, K, P, P)
    sim = (e_q.reshape(B * P, D) @ queue_h.detach().reshape(C * K * P, D).T).view(B, P, C, K, P)
    cost_q = 1 - sim.permute(0, 2, 3, 1, 4)
    bidx = torch.arange(B, device=dev)
    cost_pos = cost_q[bidx, labels]                                                      # (B, K, P, P)
    cost_neg = cost_q[bidx[:, None], conf]                                               # (B, n_conf, K, P, P)
    costs = torch.cat([cost_cur, cost_pos.reshape(B * K, P, P), cost_neg.reshape(B * n_conf * K, P, P)])
    # the reference's calls: the batch's current pairs, then per sample its positive and its negative call
    groups = torch.cat([torch.zeros(B, dtype=torch.long, device=dev),
                        1 + bidx.repeat_interleave(K), 1 + B + bidx.repeat_interleave(n_conf * K)])
    plan, iters = sinkhorn_log(costs, eps, max_iter, tol, groups)
    n_cur, n_pos = B, B * K
    sel_cur = select_costs(costs[:n_cur], plan[:n_cur], pos_top, True, generator)                  # (B, 1)
    sel_pos = select_costs(costs[n_cur:n_cur + n_pos], plan[n_cur:n_cur + n_pos], pos_top, True, generator)
    sel_neg = select_costs(costs[n_cur + n_pos:], plan[n_cur + n_pos:], neg_top, False, generator)
    logits = 1 - torch.cat([sel_cur, sel_pos.view(B, K), sel_neg.view(B, n_conf * K * neg_top)], 1)
    return logits, iters


def concept_contrastive_loss(logits: torch.Tensor, K: int, T: float) -> torch.Tensor:
    return kl_first_positives(logits / T, 1 + K)
