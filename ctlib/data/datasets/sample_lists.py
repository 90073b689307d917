"""Sample-rate lists: TLlib's verbatim, else generated once (class-balanced, seeded), written with
a checksum and reused.

A generated list is written beside the data (``ROOT/ctlib_sample_lists/``) when that folder is
writable, else in the kit's cache folder (``$CTLIB_CACHE_DIR``, default
``~/.cache/ctlib/sample_lists``, one sub-folder per dataset root). Later runs read it back
(``sample_list_source='cached'``) after checking its checksum and that every entry is still in the
training split. The entry format is TLlib's: ``<path relative to the dataset folder> <label>``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...atomic import write_text_atomic
from ..base import ClassificationDataset, DatasetError
from ..sampling import list_checksum, sample_per_class
from ._common import relkey

BESIDE_DIR = "ctlib_sample_lists"
HEADER = "# ctlib sample list v1"


def cache_dir() -> Path:
    """The kit's cache folder for sample lists: ``$CTLIB_CACHE_DIR`` or ``~/.cache/ctlib/sample_lists``."""
    env = os.environ.get("CTLIB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctlib" / "sample_lists"


def entry_keys(ds: ClassificationDataset) -> list[str]:
    """One ``<key> <label>`` line per sample: the path relative to the dataset folder for files, the
    position in the split for in-memory images (CIFAR)."""
    base = ds.info.get("list_base")
    keys = [relkey(s, base) if isinstance(s, (str, os.PathLike)) and base else f"#{i}"
            for i, s in enumerate(ds.samples)]
    return [f"{k} {t}" for k, t in zip(keys, ds.targets)]


def list_locations(name: str, root: str | None, sample_rate: int, seed: int) -> list[Path]:
    """Where a generated list is looked for and written, in order: beside the data, then the cache."""
    fname = f"{name}_train_{sample_rate}_seed{seed}.txt"
    out = []
    if root:
        out.append(Path(root) / BESIDE_DIR / fname)
    key = hashlib.sha256(str(Path(root).resolve() if root else "none").encode()).hexdigest()[:12]
    out.append(cache_dir() / f"{name}-{key}" / fname)
    return out


def write_list(path: Path, lines: list[str], header: str) -> None:
    write_text_atomic(path, header + "\n" + "".join(line + "\n" for line in lines))


def read_list(path: Path) -> tuple[dict, list[str]]:
    """(header fields, entry lines) of a written list; a DatasetError if it is damaged."""
    try:
        text = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read sample list {path}: {e}; delete it and it will be regenerated") from None
    if not text or not text[0].startswith(HEADER):
        raise DatasetError(f"sample list {path} has no ctlib header; it is not a list this kit wrote. Delete it "
                           "and it will be regenerated.")
    fields = dict(kv.split("=", 1) for kv in text[0][len(HEADER):].split() if "=" in kv)
    lines = [line for line in text[1:] if line.strip()]
    if fields.get("sha256") != list_checksum(lines):
        raise DatasetError(f"sample list {path} is corrupt (its checksum does not match its content). Delete "
                           "it and it will be regenerated from the same seed.")
    return fields, lines


def _indices_from(path: Path, lines: list[str], entries: list[str]) -> list[int]:
    pos = {e: i for i, e in enumerate(entries)}
    missing = [line for line in lines if line not in pos]
    if missing:
        raise DatasetError(f"sample list {path} names {len(missing)} image(s) that are not in the training split "
                           f"now (e.g. {missing[0]!r}): the data changed since it was written. Delete the list "
                           "to regenerate it, or restore the data.")
    return sorted(pos[line] for line in lines)


def apply_sample_rate(ds: ClassificationDataset, name: str, sample_rate: int, seed: int = 0,
                      persist: bool = True) -> ClassificationDataset:
    """The training split at ``sample_rate``, recording in ``info`` where the list came from
    (``sample_list_source``: 'tllib' | 'cached' | 'generated' | 'full'), its path and its checksum."""
    if ds.info.get("sample_list_source") == "tllib":
        return ds
    entries = entry_keys(ds)
    if sample_rate == 100:
        ds.info.update(sample_rate=100, sample_list_source="full", sample_list_path=None,
                       sample_list_checksum=list_checksum(entries))
        return ds
    root = ds.info.get("list_base")
    if not persist or not root:
        idx = sample_per_class(ds.targets, sample_rate, seed)
        return ds.subset(idx, sample_rate=sample_rate, sample_list_source="generated", sample_list_path=None,
                         sample_list_checksum=list_checksum([entries[i] for i in idx]))
    locations = list_locations(name, root, sample_rate, seed)
    for path in locations:
        if path.is_file():
            fields, lines = read_list(path)
            if fields.get("dataset") != name or fields.get("sample_rate") != str(sample_rate):
                raise DatasetError(f"sample list {path} was written for dataset={fields.get('dataset')} "
                                   f"sample_rate={fields.get('sample_rate')}, not {name} at {sample_rate} %. "
                                   "Delete it and it will be regenerated.")
            return ds.subset(_indices_from(path, lines, entries), sample_rate=sample_rate,
                             sample_list_source="cached", sample_list_path=str(path),
                             sample_list_checksum=fields["sha256"])
    idx = sample_per_class(ds.targets, sample_rate, seed)
    lines = [entries[i] for i in idx]
    checksum = list_checksum(lines)
    header = f"{HEADER} dataset={name} sample_rate={sample_rate} seed={seed} sha256={checksum}"
    errors = []
    for path in locations:
        try:
            write_list(path, lines, header)
            break
        except OSError as e:
            errors.append(f"{path}: {e}")
    else:
        raise DatasetError("cannot write the generated sample list anywhere: " + "; ".join(errors)
                           + ". Set CTLIB_CACHE_DIR to a writable folder.")
    return ds.subset(idx, sample_rate=sample_rate, sample_list_source="generated", sample_list_path=str(path),
                     sample_list_checksum=checksum)
