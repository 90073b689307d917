"""Plain formulations of the reference implementation's concept parts, written the way the authors'
code computes them (per-sample Python loops, numpy argsort, one Sinkhorn call per sample), for the
tests to compare ctlib's vectorised versions against. Device-agnostic and test-only."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def search_patches_loop(fmap, logits, labels, head_weight, confusing, num_patches, width, stride_ranks,
                        feat_stride, box, image_size):
    """Reference `_search_patches` + `generate_box`, per sample, with geometry as parameters."""
    B, D, H, W = fmap.shape
    out_boxes, out_conf = [], []
    model_output = logits.detach().cpu().numpy()
    lab = labels.cpu().numpy()
    for i in range(B):
        conf = (-model_output[i]).argsort(kind="stable")[:confusing + 1]
        conf = np.delete(conf, np.where(conf == lab[i]))[:confusing]
        out_conf.append(conf)
        score = 3 * head_weight[lab[i]] - head_weight[conf[0]] - head_weight[conf[1]] - head_weight[conf[2]]
        _, order = torch.topk(score, D)
        boxes = []
        for start in np.arange(0, D, stride_ranks)[:num_patches]:
            amap = fmap[i][order[start:start + width]].sum(0)
            peak = int(torch.argmax(amap))
            y, x = (peak // W) * feat_stride, (peak % W) * feat_stride
            half = box // 2
            boxes.append([max(0, x - half), max(0, y - half), min(image_size, x + half), min(image_size, y + half)])
        out_boxes.append(boxes)
    return torch.tensor(out_boxes, dtype=torch.float), torch.tensor(np.stack(out_conf))


def sinkhorn_reference(x, y, eps=0.01, max_iter=200, thresh=1e-3):
    """Reference SinkhornDistance iterations for one call: x (1 or N, n, d), y (N, m, d). Returns (C, pi)."""
    if x.size(0) == 1 and x.size(0) != y.size(0):
        x = x.repeat(y.size(0), 1, 1)
    C = 1.0 - torch.bmm(x, y.transpose(1, 2))
    N, n, m = C.shape
    mu = torch.full((N, n), 1.0 / n, dtype=C.dtype)
    nu = torch.full((N, m), 1.0 / m, dtype=C.dtype)
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)

    def M(u, v):
        return (-C + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        u1 = u
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(u, v), dim=-1)) + u
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(M(u, v).transpose(-2, -1), dim=-1)) + v
        err = (u - u1).abs().sum(-1).mean()
        if err.item() < thresh:
            break
    return C, torch.exp(M(u, v))


def sinkhorn_select_reference(x, y, pos, topk_pos=1, eps=0.01):
    """Reference selection; with topk_pos=1 the random pick among the top-3 is made deterministic."""
    C, pi = sinkhorn_reference(x, y, eps)
    N = pi.size(0)
    k = topk_pos if pos else 10
    idx = torch.topk(pi.reshape(N, -1), k, dim=1).indices
    if pos:
        idx = idx[:, :1]
    return C.reshape(N, -1).gather(1, idx).reshape(-1)


def concept_logits_loop(e_q, e_k, queue_h, labels, conf, eps=0.01):
    """Reference forward's concept-level logits, per sample (positives: top-1 plan entry)."""
    B = e_q.shape[0]
    cur = 1.0 - sinkhorn_select_reference(e_q, e_k, True, eps=eps).unsqueeze(-1)
    rows = []
    for i in range(B):
        c = int(labels[i])
        pos = 1.0 - sinkhorn_select_reference(e_q[i:i + 1], queue_h[c], True, eps=eps)
        neg = 1.0 - sinkhorn_select_reference(e_q[i:i + 1], queue_h[conf[i]].flatten(end_dim=1), False, eps=eps)
        rows.append(torch.cat([cur[i], pos, neg]))
    return torch.stack(rows)


def image_logits_loop(z_q, z_k, queue_z, labels):
    """Reference image-level logits [cur, pos (K), neg ((C-1)K)], per sample."""
    cur = torch.einsum("nc,nc->n", z_q, z_k).unsqueeze(-1)
    pos_l, neg_l = [], []
    for i in range(z_q.shape[0]):
        c = int(labels[i])
        pos = queue_z[:, c, :]
        neg = torch.cat([queue_z[:, :c, :], queue_z[:, c + 1:, :]], dim=1).flatten(start_dim=1)
        pos_l.append(z_q[i:i + 1] @ pos)
        neg_l.append(z_q[i:i + 1] @ neg)
    return torch.cat([cur, torch.cat(pos_l), torch.cat(neg_l)], 1)


def kl_loss_reference(logits, T, K):
    """KLDivLoss(batchmean) between log_softmax(logits/T) and a target uniform on the first K+1 entries."""
    target = torch.zeros_like(logits)
    target[:, :K + 1] = 1.0 / (K + 1)
    return torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(logits / T, dim=1), target)


def enqueue_loop(queue_z, queue_h, ptr, z, h, labels, K):
    """Reference `_dequeue_and_enqueue`, one sample at a time."""
    for i in range(z.shape[0]):
        c = int(labels[i])
        p = int(ptr[c])
        queue_z[:, c, p] = z[i]
        queue_h[c, p] = h[i]
        ptr[c] = (p + 1) % K


def pam_naive(x, q_conv, k_conv, v_conv, gamma):
    """Position attention with explicit loops over positions."""
    B, D, H, W = x.shape
    N = H * W
    q = q_conv(x).flatten(2)
    k = k_conv(x).flatten(2)
    v = v_conv(x).flatten(2)
    out = torch.zeros(B, D, N)
    for b in range(B):
        for j in range(N):
            energy = torch.stack([q[b, :, j] @ k[b, :, i] for i in range(N)])
            a = torch.softmax(energy, 0)
            out[b, :, j] = sum(a[i] * v[b, :, i] for i in range(N))
    return gamma * out.view(B, D, H, W) + x


def cam_naive(x, gamma):
    """Channel attention with explicit loops over channels."""
    B, D, H, W = x.shape
    X = x.flatten(2)
    out = torch.zeros_like(X)
    for b in range(B):
        for c in range(D):
            energy = torch.stack([X[b, c] @ X[b, d] for d in range(D)])
            a = torch.softmax(energy.max() - energy, 0)
            out[b, c] = (a[:, None] * X[b]).sum(0)
    return gamma * out.view(B, D, H, W) + x
