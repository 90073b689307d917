"""One builder shape for every on-disk dataset: TLlib lists when the root holds them, else the
dataset's own (torchvision or official) layout, with optional download."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..base import ClassificationDataset, DatasetError
from ..registry import register
from . import tllib
from ._common import Layout, check_split, require, root_path

#: every registered on-disk dataset's layout, by name (used by ``ctlib data check``)
LAYOUTS: dict[str, Layout] = {}


def dataset_family(layout: Layout, native: Callable[[Path, str], ClassificationDataset],
                   fetch: Callable[[Path], None] | None = None, tllib_subdirs: Sequence[str] | None = None):
    """Register ``layout.name`` with a builder ``(root, split='train', sample_rate=100, download=False)``.

    ``native(root, split)`` loads the dataset's own layout (after ``layout.required`` was checked);
    ``fetch(root)`` downloads it; ``tllib_subdirs`` are the folders under ROOT where TLlib's
    ``image_list/`` may sit (None: TLlib has no list layout for this dataset).
    """
    name = layout.name

    def build(root=None, split: str = "train", sample_rate: int = 100, download: bool = False
              ) -> ClassificationDataset:
        check_split(name, split)
        if download and root not in (None, ""):
            Path(root).expanduser().mkdir(parents=True, exist_ok=True)
        path = root_path(name, root, layout)
        if tllib_subdirs is not None:
            found = tllib.find_lists(path, tllib_subdirs)
            if found:
                return tllib.load(name, *found, split=split, sample_rate=sample_rate)
        if download:
            if fetch is None:
                raise DatasetError(f"{name}: no download available.\nObtain it manually: {layout.obtain}")
            fetch(path)
        require(layout, path)
        return native(path, split)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{layout.title}. {layout.describe()}"
    LAYOUTS[name] = layout
    register(name)(build)
    return build
