"""The training data stream: an endless sequence of shuffled passes (drop_last), cut into fixed-size
epochs of ``iters_per_epoch`` batches, like the reference's ForeverDataIterator.

The stream is a pure function of (seed, number of images, batch size): batch j of the run lies in
pass j // batches_per_pass, whose permutation is seeded by (seed, pass). An epoch's batches are
therefore known without replaying earlier epochs, which is what makes resuming exact.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..seeding import derived_seed


class EpochBatches(Sampler):
    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, iters_per_epoch: int):
        if num_items < batch_size:
            raise ValueError(f"the training set has {num_items} images, fewer than one batch of {batch_size}: "
                             "lower batch_size or use a higher sample rate")
        self.n, self.b, self.seed, self.epoch, self.iters = num_items, batch_size, seed, epoch, iters_per_epoch
        self.per_pass = num_items // batch_size
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, p: int) -> torch.Tensor:
        if p not in self._perm_cache:
            g = torch.Generator().manual_seed(derived_seed(self.seed, p, 0xDA7A))
            self._perm_cache = {p: torch.randperm(self.n, generator=g)}
        return self._perm_cache[p]

    def __len__(self) -> int:
        return self.iters

    def __iter__(self):
        for j in range(self.epoch * self.iters, (self.epoch + 1) * self.iters):
            p, k = divmod(j, self.per_pass)
            yield self._perm(p)[k * self.b:(k + 1) * self.b].tolist()
