"""Dataset registry: name → builder(root, split) returning a ClassificationDataset.

``build_dataset`` adds the sample rate and the transform on top of every builder.
"""
from __future__ import annotations

from typing import Callable

from .base import ClassificationDataset, DatasetError
from .embedded import load_demo
from .sampling import check_sample_rate, list_checksum, sample_per_class

Builder = Callable[..., ClassificationDataset]
_REGISTRY: dict[str, Builder] = {}


def register(name: str):
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {available()}")
    return _REGISTRY[name]


def build_dataset(name: str, root=None, split: str = "train", sample_rate: int = 100, transform=None,
                  seed: int = 0) -> ClassificationDataset:
    """Load ``split`` of dataset ``name`` from ``root``; for the train split keep ``sample_rate`` % of
    each class (deterministic, seeded). ``info`` records how the subset was made."""
    check_sample_rate(sample_rate)
    ds = get_builder(name)(root, split)
    if split == "train" and sample_rate != 100:
        idx = sample_per_class(ds.targets, sample_rate, seed)
        ds = ds.subset(idx, sample_rate=sample_rate, sample_list_source="generated",
                       sample_list_checksum=list_checksum([str(i) for i in idx]))
    else:
        ds.info.setdefault("sample_rate", sample_rate if split == "train" else 100)
    return ds.with_transform(transform)


register("demo")(load_demo)
