"""Shared pieces of the dataset builders: image loading with errors that name the file, layout
checks with errors that say what to do, torchvision calls and downloads that fail readably."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from ..base import ClassificationDataset, DatasetError

README_HINT = "See data/README.md for every dataset's layout and how to prepare it."


@dataclass(frozen=True)
class Layout:
    """What a dataset looks like on disk and where to get it; used in every error message."""
    name: str
    title: str
    expected: str                      # the layout under ROOT, one path a line
    obtain: str                        # how to get it
    required: Sequence[str] = ()       # paths under ROOT that must exist (checked before loading)
    tllib: str = ""                    # TLlib's layout, when TLlib ships one
    num_classes: int | None = None     # the standard class count (a check note when it differs)

    def describe(self) -> str:
        text = f"Expected layout under ROOT ({self.title}):\n" + _indent(self.expected)
        if self.tllib:
            text += "\nor TLlib's layout:\n" + _indent(self.tllib)
        return f"{text}\nHow to obtain it: {self.obtain}\n{README_HINT}"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip("\n").splitlines())


def root_path(name: str, root, layout: Layout | None = None) -> Path:
    """``root`` as a Path; an error naming the dataset when it is not given or not a folder."""
    hint = ("\n" + layout.describe()) if layout else ""
    if root is None or str(root) == "":
        raise DatasetError(f"{name}: no dataset root given; pass the folder that holds the dataset.{hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{name}: dataset root {str(path)!r} does not exist or is not a folder.{hint}")
    return path


def require(layout: Layout, root: Path, paths: Sequence[str] | None = None) -> None:
    """Raise a DatasetError listing the missing paths (and the expected layout) if any is absent."""
    missing = [p for p in (layout.required if paths is None else paths) if not (root / p).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DatasetError(f"{layout.name}: dataset not found or incomplete under {str(root)!r} "
                           f"(missing: {shown}).\n{layout.describe()}")


def load_image_file(dataset: str, path) -> Image.Image:
    """Open an image file fully (so truncated files fail here) as RGB; a DatasetError naming the file
    when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{dataset}: image file missing: {path} (the dataset folder is incomplete; "
                           f"`ctlib data check {dataset} ROOT` lists every problem).") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{dataset}: cannot read image {path} ({type(e).__name__}: {e}). The file is "
                           "corrupt or not an image: replace it, or pass skip_bad_images=True to drop "
                           "unreadable files (they are counted in the run record).") from None


def array_image(arr) -> Image.Image:
    """An HxWx3 / HxW uint8 array as a PIL image (CIFAR keeps its images in memory)."""
    return Image.fromarray(arr)


def from_files(name: str, files: Sequence[Any], labels: Sequence[int], classes: Sequence[str], base: Path,
               layout: str, **info) -> ClassificationDataset:
    """A dataset of image files; ``base`` is the folder that sample-list entries are relative to."""
    files = [str(f) for f in files]
    if not files:
        raise DatasetError(f"{name}: the {info.get('split', '')} split has no images under {str(base)!r}; "
                           f"the layout is incomplete. {README_HINT}")
    n = len(classes)
    bad = sorted({int(t) for t in labels if not 0 <= int(t) < n})
    if bad:
        raise DatasetError(f"{name}: labels {bad[:5]} outside 0..{n - 1} (the dataset has {n} classes); the "
                           f"annotation files under {str(base)!r} do not match the class list.")
    return ClassificationDataset(files, labels, classes, functools.partial(load_image_file, name), name=name,
                                 info={"root": str(base), "list_base": str(base), "layout": layout, **info})


def call_torchvision(layout: Layout, fn: Callable, *args, **kwargs):
    """Instantiate a torchvision dataset; whatever goes wrong becomes a DatasetError with the layout."""
    try:
        return fn(*args, **kwargs)
    except DatasetError:
        raise
    except Exception as e:  # torchvision raises RuntimeError/ValueError/KeyError/OSError on bad layouts
        raise DatasetError(f"{layout.name}: torchvision's loader failed on this folder "
                           f"({type(e).__name__}: {e}).\n{layout.describe()}") from e


def download(layout: Layout, fn: Callable, *args, **kwargs):
    """Run a download; any failure becomes a DatasetError naming the dataset and the manual route."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        raise DatasetError(f"{layout.name}: download failed ({type(e).__name__}: {e}).\n"
                           f"Obtain it manually: {layout.obtain}\n{README_HINT}") from e


def check_split(name: str, split: str, allowed=("train", "test")) -> str:
    if split not in allowed:
        raise DatasetError(f"{name}: unknown split {split!r}: choose one of {list(allowed)}")
    return split


def relkey(path: str, base: str) -> str:
    """A sample's entry in a list file: its path relative to the list base, with forward slashes."""
    rel = os.path.relpath(path, base)
    return rel.replace(os.sep, "/")
