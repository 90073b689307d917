"""Dataset registry: name → builder(root, split[, sample_rate, download]) returning a
ClassificationDataset of the full split (or of TLlib's list for the rate).

``build_dataset`` adds sample-rate lists, the validation carve-out, bad-image skipping and the
transform on top of every builder. Importing ``ctlib.data`` registers every dataset.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .base import ClassificationDataset, DatasetError
from .embedded import load_demo
from .sampling import check_sample_rate, list_checksum, split_validation

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


#: fraction of each class's training images carved out as the validation split (honest protocol)
DEFAULT_VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")


def _call_builder(builder: Builder, root, split: str, sample_rate: int, download: bool) -> ClassificationDataset:
    params = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in (("sample_rate", sample_rate), ("download", download)) if k in params}
    if download and "download" not in params:
        raise DatasetError(f"dataset builder {builder.__name__} cannot download")
    return builder(root, split, **kwargs)


def build_dataset(name: str, root=None, split: str = "train", sample_rate: int = 100, transform=None,
                  seed: int = 0, *, val_fraction: float | None = None, download: bool = False,
                  skip_bad_images: bool = False, progress: bool = True) -> ClassificationDataset:
    """Load ``split`` of dataset ``name`` from ``root``.

    * ``split='train'``: the training images at ``sample_rate`` % of each class: TLlib's
      ``train_<rate>.txt`` when the root holds it, else a seeded class-balanced list generated once,
      written with its checksum and reused (see ``ctlib.data.datasets.sample_lists``).
    * ``val_fraction``: carve a class-stratified validation part (seeded) out of that training list;
      ``split='train'`` then returns the rest and ``split='val'`` the carved part
      (``split='val'`` alone uses ``DEFAULT_VAL_FRACTION``).
    * ``split='test'``: the full test split at every rate.
    * ``download``: fetch the dataset with torchvision's download first (a failure raises).
    * ``skip_bad_images``: open every image now and drop unreadable ones (counted in ``info``);
      otherwise an unreadable image raises a DatasetError naming the file when it is loaded.
      ``progress``: show a progress bar while the images are checked.

    ``info`` records how the dataset was made (layout, sample-list source, path and checksum, ...).
    """
    from .datasets.sample_lists import apply_sample_rate, entry_keys  # the datasets package imports this module

    check_sample_rate(sample_rate)
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}: choose one of {list(SPLITS)}")
    builder = get_builder(name)
    if split == "test":
        ds = _call_builder(builder, root, "test", 100, download)
        ds.info.update(sample_rate=100)
    else:
        ds = _call_builder(builder, root, "train", sample_rate, download)
        ds = apply_sample_rate(ds, name, sample_rate, seed, persist=bool(root) and "list_base" in ds.info)
        if split == "val" or val_fraction:
            fraction = val_fraction or DEFAULT_VAL_FRACTION
            train_idx, val_idx = split_validation(ds.targets, fraction, seed)
            idx = val_idx if split == "val" else train_idx
            keys = entry_keys(ds)
            ds = ds.subset(idx, val_fraction=fraction, val_seed=seed,
                           val_checksum=list_checksum([keys[i] for i in val_idx]))
    ds.info.update(dataset=name, split=split, seed=seed)
    if skip_bad_images:
        from .check import drop_unreadable
        ds = drop_unreadable(ds, progress)
    return ds.with_transform(transform)


register("demo")(load_demo)
