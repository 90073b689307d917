"""The one dataset type every builder returns: samples, integer labels, class names."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset


class DatasetError(RuntimeError):
    """A dataset cannot be loaded as asked; the message says what to do."""


class ClassificationDataset(Dataset):
    """Images and integer labels.

    ``samples[i]`` is whatever ``loader`` turns into a PIL image (a file path, an array, ...);
    images are always returned as RGB, then passed through ``transform``.
    """

    def __init__(self, samples: Sequence[Any], targets: Sequence[int], classes: Sequence[str],
                 loader: Callable[[Any], Image.Image], transform: Callable | None = None,
                 name: str = "", info: dict | None = None):
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} samples but {len(targets)} targets")
        self.samples = list(samples)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.loader = loader
        self.transform = transform
        self.name = name
        self.info = dict(info or {})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        img = self.loader(self.samples[index])
        return img if img.mode == "RGB" else img.convert("RGB")

    def __getitem__(self, index: int):
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def subset(self, indices: Sequence[int], **info) -> "ClassificationDataset":
        indices = list(indices)
        return ClassificationDataset([self.samples[i] for i in indices], [self.targets[i] for i in indices],
                                     self.classes, self.loader, self.transform, self.name,
                                     {**self.info, **info})

    def with_transform(self, transform: Callable | None) -> "ClassificationDataset":
        return ClassificationDataset(self.samples, self.targets, self.classes, self.loader, transform,
                                     self.name, self.info)

    def class_counts(self) -> list[int]:
        counts = [0] * self.num_classes
        for t in self.targets:
            counts[t] += 1
        return counts
