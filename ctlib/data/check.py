"""Validate a dataset folder (``ctlib data check DATASET ROOT``) and drop unreadable images.

``check_dataset`` loads every split, opens every image (with a progress bar) and returns a
:class:`CheckReport`: per-split counts, number of classes, where each sample-rate list would come
from, the problems found (they make the command exit non-zero) and notes (worth knowing, not
fatal: e.g. a class count that differs from the standard one, as in a trimmed copy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .base import ClassificationDataset, DatasetError
from .registry import get_builder
from .sampling import SAMPLE_RATES

MAX_LISTED = 10


def scan_images(ds: ClassificationDataset, progress: bool = False, desc: str = "") -> list[tuple[int, str]]:
    """(index, message) for every sample of ``ds`` that cannot be loaded as an image."""
    bad = []
    for i in tqdm(range(len(ds)), desc=desc or f"{ds.name} images", disable=not progress, unit="img",
                  leave=False):
        try:
            ds.load_image(i)
        except DatasetError as e:
            bad.append((i, str(e)))
        except Exception as e:  # a loader outside the kit's (e.g. a registered third-party builder)
            bad.append((i, f"{ds.samples[i]!s:.200}: {type(e).__name__}: {e}"))
    return bad


def drop_unreadable(ds: ClassificationDataset, progress: bool = True) -> ClassificationDataset:
    """``ds`` without its unreadable images; ``info`` records how many were skipped and which."""
    bad = scan_images(ds, progress, desc=f"{ds.name}: checking images")
    skipped = {i for i, _ in bad}
    keep = [i for i in range(len(ds)) if i not in skipped]
    if not keep:
        raise DatasetError(f"{ds.name}: every image of the {ds.info.get('split', '')} split is unreadable "
                           f"(first: {bad[0][1]})")
    return ds.subset(keep, skipped_images=len(bad),
                     skipped_files=[str(ds.samples[i]) for i, _ in bad][:MAX_LISTED] if bad else [])


@dataclass
class SplitStats:
    images: int
    classes_present: int
    min_per_class: int
    max_per_class: int
    unreadable: int = 0


@dataclass
class CheckReport:
    dataset: str
    root: str
    layout: str = ""
    num_classes: int = 0
    standard_classes: int | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    sample_lists: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        out = [f"ctlib data check: {self.dataset} at {self.root or '(default)'}"]
        if self.layout:
            out.append(f"layout: {self.layout}")
        if self.splits:
            std = f" (standard: {self.standard_classes})" if self.standard_classes else ""
            out.append(f"classes: {self.num_classes}{std}")
            out.append(f"{'split':<6} {'images':>8} {'classes':>8} {'per class':>12} {'unreadable':>11}")
            for name, s in self.splits.items():
                out.append(f"{name:<6} {s.images:>8} {s.classes_present:>8} "
                           f"{f'{s.min_per_class}-{s.max_per_class}':>12} {s.unreadable:>11}")
        if self.sample_lists:
            out.append("sample-rate lists (train):")
            out += [f"  {rate:>3} %: {src}" for rate, src in self.sample_lists.items()]
        if self.images_checked:
            out.append(f"images opened: {self.images_checked}")
        if self.notes:
            out.append("notes:")
            out += [f"  - {n}" for n in self.notes]
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += ["  - " + p.replace("\n", "\n    ") for p in self.problems]
            out.append("FAILED")
        else:
            out.append("OK")
        return "\n".join(out)


def _stats(ds: ClassificationDataset) -> SplitStats:
    counts = [c for c in ds.class_counts() if c]
    return SplitStats(len(ds), len(counts), min(counts, default=0), max(counts, default=0))


def _describe_lists(name: str, train: ClassificationDataset) -> dict[int, str]:
    from .datasets.sample_lists import list_locations, read_list
    out = {}
    info = train.info
    for rate in SAMPLE_RATES:
        if info.get("layout") == "tllib":
            path = Path(info["image_list"]).parent / f"train_{rate}.txt"
            out[rate] = f"TLlib list {path}" if path.is_file() else "generated from TLlib's training list on first use"
        elif rate == 100:
            out[rate] = "the full training split"
        elif "list_base" not in info:
            out[rate] = "generated in memory"
        else:
            found = [p for p in list_locations(name, info["list_base"], rate, 0) if p.is_file()]
            if found:
                try:
                    read_list(found[0])
                    out[rate] = f"cached list (seed 0) {found[0]}"
                except DatasetError as e:
                    out[rate] = f"DAMAGED list {found[0]}"
                    raise DatasetError(str(e)) from None
            else:
                out[rate] = "generated on first use (seed 0), written beside the data or in the cache folder"
    return out


def check_dataset(name: str, root=None, images: bool = True, progress: bool = True) -> CheckReport:
    """Load every split of ``name`` under ``root`` and validate it; never raises for data problems."""
    report = CheckReport(name, str(root or ""))
    try:
        builder = get_builder(name)
    except DatasetError as e:
        report.problems.append(str(e))
        return report
    loaded: dict[str, ClassificationDataset] = {}
    errors: dict[str, str] = {}
    for split in ("train", "test"):
        try:
            loaded[split] = builder(root, split)
        except DatasetError as e:
            errors[split] = str(e)
        except Exception as e:  # a failure the builders did not foresee: still reported, not a traceback
            errors[split] = f"unexpected {type(e).__name__}: {e}"
    if len(set(errors.values())) == 1 and len(errors) == 2:   # e.g. a missing root: say it once
        report.problems.append(next(iter(errors.values())))
    else:
        report.problems += [f"{split} split: {msg}" for split, msg in errors.items()]
    if not loaded:
        return report
    first = next(iter(loaded.values()))
    report.num_classes = first.num_classes
    report.layout = f"{first.info.get('layout', 'embedded')} ({first.info.get('root', first.info.get('source', ''))})"
    from .datasets import LAYOUTS
    report.standard_classes = LAYOUTS[name].num_classes if name in LAYOUTS else None
    if report.standard_classes and report.num_classes != report.standard_classes:
        report.notes.append(f"{report.num_classes} classes, the standard dataset has {report.standard_classes} "
                            "(a trimmed or different copy?)")
    for split, ds in loaded.items():
        report.splits[split] = _stats(ds)
        if ds.classes != first.classes:
            report.problems.append(f"the {split} split's class list differs from the {next(iter(loaded))} split's")
        empty = [c for c, n in zip(ds.classes, ds.class_counts()) if n == 0]
        if empty:
            report.notes.append(f"{len(empty)} of {ds.num_classes} classes have no {split} images "
                                f"(e.g. {', '.join(map(str, empty[:3]))})")
    if len(loaded) == 2:
        paths = [{s for s in d.samples if isinstance(s, (str, os.PathLike))} for d in loaded.values()]
        both = paths[0] & paths[1]
        if both:
            report.problems.append(f"{len(both)} image(s) are in both train and test, e.g. {sorted(both)[0]}")
    if "train" in loaded:
        try:
            report.sample_lists = _describe_lists(name, loaded["train"])
        except DatasetError as e:
            report.problems.append(str(e))
    if images:
        for split, ds in loaded.items():
            bad = scan_images(ds, progress, desc=f"{name} {split}: opening images")
            report.images_checked += len(ds)
            report.splits[split].unreadable = len(bad)
            report.problems += [msg for _, msg in bad[:MAX_LISTED]]
            if len(bad) > MAX_LISTED:
                report.problems.append(f"... and {len(bad) - MAX_LISTED} more unreadable images in {split}")
    return report
