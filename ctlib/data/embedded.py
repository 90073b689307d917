"""The embedded demo dataset: a class-balanced Fashion-MNIST subset shipped in data/.

2,000 training and 1,000 test images (200 / 100 per class), 28×28 greyscale, MIT licence
(data/LICENSE-fashion-mnist.txt). Built by scripts/build_embedded_data.py. Images are returned
as RGB PIL images; the views resize them to the configured image size.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .base import ClassificationDataset, DatasetError

EMBEDDED_FILE = Path(__file__).resolve().parents[2] / "data" / "fashion_mnist_small.npz"


@lru_cache(maxsize=2)
def _arrays(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr, mode="L")


def load_demo(root=None, split: str = "train") -> ClassificationDataset:
    """The embedded dataset; ``root`` may point at another .npz of the same format."""
    path = Path(root) if root else EMBEDDED_FILE
    if path.is_dir():
        path = path / EMBEDDED_FILE.name
    if not path.is_file():
        raise DatasetError(f"embedded demo dataset not found at {path}; it ships in the repository's data/ "
                           "folder (rebuild it with scripts/build_embedded_data.py)")
    if split not in ("train", "test"):
        raise DatasetError(f"demo dataset has splits 'train' and 'test', not {split!r}")
    z = _arrays(str(path))
    images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    return ClassificationDataset(list(images), labels.tolist(), z["classes"].tolist(), _to_pil,
                                 name="demo", info={"source": str(path)})
