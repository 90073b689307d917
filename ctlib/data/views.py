"""Training views and the evaluation transform of METHOD.md §2.2, with the image size a setting.

At ``size=224`` these are exactly the reference transforms: RandomResizedCrop(224, scale) →
RandomHorizontalFlip → ToTensor → Normalize; evaluation Resize(256) → CenterCrop(224).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torchvision.transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: scale ranges of RandomResizedCrop for the two kinds of training view
VIEW_SCALES = {"image": (0.2, 1.0), "patch": (0.5, 1.0)}


def train_view(size: int = 224, kind: str = "image", mean=IMAGENET_MEAN, std=IMAGENET_STD,
               hflip: bool = True, color_jitter: bool = False) -> T.Compose:
    """v0/v1 (``kind='image'``, scale 0.2–1) or v2/v3 (``kind='patch'``, scale 0.5–1).
    Flip-off and colour jitter only apply to image views, as in the reference."""
    if kind not in VIEW_SCALES:
        raise ValueError(f"unknown view kind {kind!r}: choose one of {list(VIEW_SCALES)}")
    ops: list = [T.RandomResizedCrop(size, scale=VIEW_SCALES[kind])]
    if hflip or kind == "patch":
        ops.append(T.RandomHorizontalFlip())
    if color_jitter and kind == "image":
        ops.append(T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def eval_view(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Resize(size·256/224) → CenterCrop(size) → ToTensor → Normalize."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


class MultiView:
    """Apply several transforms to one image and return the list of results."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        return [t(img) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiView({self.transforms!r})"


def training_views(kinds: Sequence[str], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   hflip: bool = True, color_jitter: bool = False) -> MultiView:
    """One transform per requested view kind, e.g. ``("image", "image", "patch", "patch")``."""
    return MultiView([train_view(size, k, mean, std, hflip, color_jitter) for k in kinds])
