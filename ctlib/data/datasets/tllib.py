"""TLlib's layout: ``image_list/*.txt`` files with ``<relative path> <label>`` lines.

TLlib ships CUB-200, Stanford Cars, Aircraft and Oxford Pets with ``train_{100,50,30,15}.txt`` and
``test.txt``; Caltech-101 and Flowers with ``train.txt``/``test.txt``; DTD as ``dtd/imagelist/`` and
SUN397 as ``SUN397/image_list/``. Paths in a list are relative to the folder holding the list
folder. Lists for a sample rate are used verbatim.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..base import ClassificationDataset, DatasetError
from ..sampling import list_checksum
from ._common import from_files

LIST_DIRS = ("image_list", "imagelist")


def find_lists(root: Path, subdirs: Sequence[str] = ("",)) -> tuple[Path, Path] | None:
    """(base folder, list folder) of a TLlib layout under ``root`` (or ``root/<subdir>``), else None."""
    for sub in subdirs:
        base = root / sub if sub else root
        for name in LIST_DIRS:
            d = base / name
            if (d / "test.txt").is_file() and ((d / "train.txt").is_file() or (d / "train_100.txt").is_file()):
                return base, d
    return None


def read_list(path: Path) -> list[tuple[str, int]]:
    """``(relative path, label)`` pairs of a list file; errors name the file and the line."""
    entries = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read image list {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"image list {path}, line {n}: expected '<relative path> <integer label>', "
                               f"got {line!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DatasetError(f"image list {path} is empty")
    return entries


def entry_lines(entries: Sequence[tuple[str, int]]) -> list[str]:
    return [f"{p} {t}" for p, t in entries]


def class_names(list_dir: Path) -> list[str]:
    """Class names of a TLlib layout: ``max label + 1`` classes over the full train and test lists,
    named after the image folder when every label maps to one distinct folder, else by number."""
    train = list_dir / "train_100.txt" if (list_dir / "train_100.txt").is_file() else list_dir / "train.txt"
    folders: dict[int, set[str]] = {}
    for f in (train, list_dir / "test.txt"):
        for rel, t in read_list(f):
            folders.setdefault(t, set()).add(Path(rel).parent.name)
    n = max(folders) + 1
    names = [next(iter(folders[t])) if len(folders.get(t, ())) == 1 else "" for t in range(n)]
    if all(names) and len(set(names)) == n:
        return names
    return [str(t) for t in range(n)]


def load(name: str, base: Path, list_dir: Path, split: str, sample_rate: int = 100) -> ClassificationDataset:
    """One split from TLlib lists; for the training split the ``train_<rate>.txt`` list when it exists
    (recorded as ``sample_list_source='tllib'``), else the full list (the kit samples it)."""
    verbatim = None
    if split == "test":
        path = list_dir / "test.txt"
    elif (list_dir / f"train_{sample_rate}.txt").is_file():
        path = verbatim = list_dir / f"train_{sample_rate}.txt"
    else:
        path = list_dir / "train_100.txt" if (list_dir / "train_100.txt").is_file() else list_dir / "train.txt"
        if sample_rate == 100:
            verbatim = path
    entries = read_list(path)
    files = [p if Path(p).is_absolute() else base / p for p, _ in entries]
    ds = from_files(name, files, [t for _, t in entries], class_names(list_dir), base, "tllib", split=split,
                    image_list=str(path))
    if verbatim is not None:
        ds.info.update(sample_rate=sample_rate, sample_list_source="tllib", sample_list_path=str(verbatim),
                       sample_list_checksum=list_checksum(entry_lines(entries)))
    return ds
