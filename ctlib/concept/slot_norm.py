"""BatchNorm statistics per patch slot inside one batched forward.

The reference encodes the 9 patch slots of a batch in 9 separate encoder passes, so in training mode
every BatchNorm layer normalises each slot's B crops with that slot's own batch statistics, and (where
its momentum is non-zero) updates its running statistics 9 times, slot after slot. ``slot_batchnorm``
gives exactly that in ONE forward over all P·B crops, laid out slot-major (crops of slot 0, then slot 1,
...): while it is active, every BatchNorm of the module normalises each slot's group with the group's
own statistics and folds the P groups' statistics into its running statistics in slot order, as P
successive calls would. Outside training mode BatchNorm is left as it is (running statistics).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def _uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _slot_forward(bn: nn.modules.batchnorm._BatchNorm, slots: int, x: torch.Tensor) -> torch.Tensor:
    if not _uses_batch_stats(bn):
        return type(bn).forward(bn, x)
    N, C = x.shape[:2]
    if N % slots:
        raise ValueError(f"slot_batchnorm: batch of {N} is not {slots} equal slots")
    B, rest = N // slots, x.shape[2:]
    cl = is_channels_last(x)
    # (P·B, C, ...) slot-major → (B, P·C, ...): one native batch norm, each (slot, channel) its own statistics
    if cl:     # keep the channels-last layout: (P, B, H, W, C) → (B, H, W, P, C) in memory
        grouped = (x.permute(0, 2, 3, 1).reshape(slots, B, *rest, C).permute(1, 2, 3, 0, 4)
                   .reshape(B, *rest, slots * C).permute(0, 3, 1, 2))
    else:
        grouped = x.view(slots, B, C, *rest).transpose(0, 1).reshape(B, slots * C, *rest)
    w = bn.weight.repeat(slots) if bn.weight is not None else None
    b = bn.bias.repeat(slots) if bn.bias is not None else None
    track = bn.training and bn.track_running_stats
    stats = track and (bn.momentum is None or bn.momentum > 0)
    # with momentum 1 into fresh buffers, batch_norm leaves there each slot's mean and unbiased variance
    dtype = bn.running_mean.dtype if stats else x.dtype          # float32 statistics under mixed precision
    mean = torch.zeros(slots * C, dtype=dtype, device=x.device) if stats else None
    var = torch.ones(slots * C, dtype=dtype, device=x.device) if stats else None
    y = F.batch_norm(grouped, mean, var, w, b, True, 1.0, bn.eps)
    if track:
        _fold_running_stats(bn, slots, mean.view(slots, C) if stats else None, var.view(slots, C) if stats else None)
    if cl:
        return (y.permute(0, 2, 3, 1).reshape(B, *rest, slots, C).permute(3, 0, 1, 2, 4)
                .reshape(N, *rest, C).permute(0, 3, 1, 2))
    return y.view(B, slots, C, *rest).transpose(0, 1).reshape(N, C, *rest)


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also plainly contiguous, as 1×1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _fold_running_stats(bn, slots: int, mean: torch.Tensor | None, var: torch.Tensor | None) -> None:
    """What ``slots`` successive training-mode calls do to the running statistics; ``mean``/``var`` (P, C)
    are each slot's batch mean and unbiased variance (None when the momentum is 0: only the count moves)."""
    if mean is None:
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(slots)
        return
    for p in range(slots):
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(mean[p].to(bn.running_mean.dtype), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var[p].to(bn.running_var.dtype), alpha=factor)


@contextmanager
def slot_batchnorm(module: nn.Module, slots: int):
    """Within the block, every BatchNorm of ``module`` takes a slot-major batch of ``slots`` equal groups."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = lambda x, bn=bn: _slot_forward(bn, slots, x)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward
