"""BatchNorm statistics per patch slot inside one batched forward.

The reference encodes the 9 patch slots of a batch in 9 separate encoder passes, so in training mode
every BatchNorm layer normalises each slot's B crops with that slot's own batch statistics, and (where
its momentum is non-zero) updates its running statistics 9 times, slot after slot. ``slot_batchnorm``
gives exactly that in ONE forward over all P·B crops, laid out slot-major (crops of slot 0, then slot 1,
...): the convolutions see all crops at once, while every BatchNorm of the module runs once per slot on
that slot's block, as the P successive calls would. Outside training mode BatchNorm is left as it is
(running statistics).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


def _uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _slot_forward(bn: nn.modules.batchnorm._BatchNorm, slots: int, x: torch.Tensor) -> torch.Tensor:
    if not _uses_batch_stats(bn):
        return type(bn).forward(bn, x)
    if x.shape[0] % slots:
        raise ValueError(f"slot_batchnorm: batch of {x.shape[0]} is not {slots} equal slots")
    # slot-major: each slot's crops are one contiguous block of the batch, in either memory layout, so each
    # block goes through the module's own forward as in the reference's per-slot passes (its statistics, its
    # running-statistics update, in slot order), with no regrouping copy of the activations
    return torch.cat([type(bn).forward(bn, block) for block in x.chunk(slots)])


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
