"""Per-class queues of key embeddings (METHOD.md §2.4), as registered buffers."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ClassQueues(nn.Module):
    """``queue_z`` (dim × C × K): K image-level key embeddings per class, feature dim first as in the
    reference; ``queue_h`` (C × K × P × dim): K key-side sets of P patch embeddings per class.
    Both start random normal, L2-normalised over the feature dim, and share one pointer per class.
    ``image=False`` / ``concept=False`` leave that queue out (an ablation that does not use it)."""

    def __init__(self, num_classes: int, K: int, dim: int, num_patches: int, image: bool = True,
                 concept: bool = True):
        super().__init__()
        self.num_classes, self.K = num_classes, K
        self.register_buffer("queue_z", F.normalize(torch.randn(dim, num_classes, K), dim=0) if image else None)
        self.register_buffer("queue_h", F.normalize(torch.randn(num_classes, K, num_patches, dim), dim=-1)
                             if concept else None)
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor | None, h: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Write the batch's keys in batch order, each at its class's pointer, which advances by one
        modulo K per sample — the reference's sample-by-sample enqueue, in one indexed write."""
        keep, pos, new_ptr = sequential_slots(labels, self.ptr, self.K, self.num_classes)
        lab, pos = labels[keep], pos[keep]
        if self.queue_z is not None:
            self.queue_z[:, lab, pos] = z.detach()[keep].T.to(self.queue_z.dtype)
        if self.queue_h is not None:
            self.queue_h[lab, pos] = h.detach()[keep].to(self.queue_h.dtype)
        self.ptr.copy_(new_ptr)


def sequential_slots(labels: torch.Tensor, ptr: torch.Tensor, K: int, num_classes: int):
    """Where a sample-by-sample enqueue of ``labels`` (in batch order, one pointer per class advancing
    by one modulo K per sample) writes each sample: ``(keep, pos, new_ptr)``. ``pos[i]`` is sample i's
    slot in its class's queue; ``keep`` drops the writes a later sample of the same class overwrites
    (a class appearing more than K times), so the kept (class, slot) pairs are distinct and one indexed
    write gives the loop's result."""
    onehot = F.one_hot(labels, num_classes)
    rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)   # earlier same-class samples
    counts = onehot.sum(0)
    keep = rank >= counts[labels] - K       # with more than K of a class, the last K writes win
    pos = (ptr[labels] + rank) % K
    return keep, pos, (ptr + counts) % K
