"""The ten datasets torchvision has a class for, in torchvision's on-disk layouts (ROOT means what
torchvision's ``root`` means), plus TLlib's list layout where TLlib ships one.

Each builder instantiates torchvision's class with ``download=False`` and takes its file list and
labels into a :class:`ClassificationDataset`; splits follow TLlib's protocol (data/README.md).
md5 sums are checked by torchvision when it downloads, not on every load (so a CIFAR or Flowers
folder is read whatever its provenance; ``ctlib data check`` opens every image).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torchvision.datasets as tvd

from ..base import ClassificationDataset, DatasetError
from ._common import Layout, array_image, call_torchvision, download, from_files
from .builder import dataset_family

TLLIB_RATES = "image_list/{train_100,train_50,train_30,train_15,test}.txt, train/, test/"
TLLIB_PLAIN = "image_list/{train,test}.txt and the image folders they name"


def _fetcher(layout: Layout, cls, **kwargs):
    def fetch(root: Path) -> None:
        download(layout, cls, str(root), download=True, **kwargs)
    return fetch


def _files(layout: Layout, root: Path, folder: str, split: str, pairs) -> ClassificationDataset:
    """(files, labels, classes) of torchvision objects → one dataset; several objects are merged."""
    files, labels, classes = [], [], None
    for f, t, c in pairs:
        files += list(f)
        labels += list(t)
        if classes is not None and list(c) != list(classes):
            raise DatasetError(f"{layout.name}: the class lists of the parts of the {split} split differ")
        classes = c
    return from_files(layout.name, files, labels, classes, root / folder, "torchvision", split=split)


# --- Stanford Cars ------------------------------------------------------------------------------
CARS = Layout(
    name="stanford_cars", title="torchvision StanfordCars", num_classes=196,
    expected="""stanford_cars/devkit/cars_meta.mat            (class_names, 196)
stanford_cars/devkit/cars_train_annos.mat
stanford_cars/cars_train/<fname>.jpg
stanford_cars/cars_test_annos_withlabels.mat  (not inside devkit/)
stanford_cars/cars_test/<fname>.jpg""",
    tllib=TLLIB_RATES,
    obtain="torchvision cannot download it any more (the original URL is dead): get cars_train/, cars_test/, "
           "devkit/ and cars_test_annos_withlabels.mat from a mirror (e.g. Kaggle's stanford-cars-dataset and "
           "cars_test_annos_withlabels), or TLlib's copy (its image_list/, train/, test/)",
    required=["stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
              "stanford_cars/cars_train", "stanford_cars/cars_test_annos_withlabels.mat", "stanford_cars/cars_test"],
)


def _cars(root: Path, split: str) -> ClassificationDataset:
    ds = call_torchvision(CARS, tvd.StanfordCars, str(root), split=split)
    return _files(CARS, root, "stanford_cars", split,
                  [([p for p, _ in ds._samples], [t for _, t in ds._samples], ds.classes)])


dataset_family(CARS, _cars, _fetcher(CARS, tvd.StanfordCars), tllib_subdirs=("",))

# --- FGVC Aircraft ------------------------------------------------------------------------------
AIRCRAFT = Layout(
    name="aircraft", title="torchvision FGVCAircraft, 100 variants, trainval / test", num_classes=100,
    expected="""fgvc-aircraft-2013b/data/variants.txt
fgvc-aircraft-2013b/data/images_variant_trainval.txt   <7-digit id> <variant>
fgvc-aircraft-2013b/data/images_variant_test.txt
fgvc-aircraft-2013b/data/images/<id>.jpg""",
    tllib=TLLIB_RATES,
    obtain="pass download=True (torchvision fetches "
           "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz) or extract "
           "that archive into ROOT",
    required=["fgvc-aircraft-2013b/data/variants.txt", "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
              "fgvc-aircraft-2013b/data/images_variant_test.txt", "fgvc-aircraft-2013b/data/images"],
)


def _aircraft(root: Path, split: str) -> ClassificationDataset:
    ds = call_torchvision(AIRCRAFT, tvd.FGVCAircraft, str(root), split="trainval" if split == "train" else "test",
                          annotation_level="variant")
    return _files(AIRCRAFT, root, "fgvc-aircraft-2013b", split, [(ds._image_files, ds._labels, ds.classes)])


dataset_family(AIRCRAFT, _aircraft, _fetcher(AIRCRAFT, tvd.FGVCAircraft), tllib_subdirs=("",))

# --- Oxford-IIIT Pets ---------------------------------------------------------------------------
PETS = Layout(
    name="oxford_pets", title="torchvision OxfordIIITPet, trainval / test", num_classes=37,
    expected="""oxford-iiit-pet/annotations/trainval.txt   <Breed_name>_<n> <class 1..37> <species> <breed id>
oxford-iiit-pet/annotations/test.txt
oxford-iiit-pet/images/<Breed_name>_<n>.jpg""",
    tllib=TLLIB_RATES,
    obtain="pass download=True (torchvision fetches images.tar.gz and annotations.tar.gz from "
           "https://www.robots.ox.ac.uk/~vgg/data/pets/) or extract both archives into ROOT/oxford-iiit-pet/",
    required=["oxford-iiit-pet/annotations/trainval.txt", "oxford-iiit-pet/annotations/test.txt",
              "oxford-iiit-pet/images"],
)


def _pets(root: Path, split: str) -> ClassificationDataset:
    ds = call_torchvision(PETS, tvd.OxfordIIITPet, str(root), split="trainval" if split == "train" else "test")
    return _files(PETS, root, "oxford-iiit-pet", split, [(ds._images, ds._labels, ds.classes)])


dataset_family(PETS, _pets, _fetcher(PETS, tvd.OxfordIIITPet), tllib_subdirs=("",))


# --- Oxford 102 Flowers -------------------------------------------------------------------------
class _Flowers102Files(tvd.Flowers102):
    """torchvision's Flowers102 without the md5 check on load (the check stays on download)."""
    _file_dict = {k: (fn, None) for k, (fn, _) in tvd.Flowers102._file_dict.items()}


FLOWERS = Layout(
    name="flowers102", title="torchvision Flowers102, train+val / test", num_classes=102,
    expected="""flowers-102/jpg/image_00001.jpg ...
flowers-102/imagelabels.mat   (labels, 1-based, one per image)
flowers-102/setid.mat         (trnid, valid, tstid)""",
    tllib=TLLIB_PLAIN,
    obtain="pass download=True (torchvision fetches 102flowers.tgz, imagelabels.mat and setid.mat from "
           "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/) or put them into ROOT/flowers-102/",
    required=["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"],
)


def _flowers(root: Path, split: str) -> ClassificationDataset:
    parts = ("train", "val") if split == "train" else ("test",)
    objs = [call_torchvision(FLOWERS, _Flowers102Files, str(root), split=p) for p in parts]
    return _files(FLOWERS, root, "flowers-102", split, [(o._image_files, o._labels, o.classes) for o in objs])


dataset_family(FLOWERS, _flowers, _fetcher(FLOWERS, tvd.Flowers102), tllib_subdirs=("",))

# --- DTD ----------------------------------------------------------------------------------------
DTD = Layout(
    name="dtd", title="torchvision DTD, partition 1, train+val / test", num_classes=47,
    expected="""dtd/dtd/images/<class>/<file>.jpg
dtd/dtd/labels/train1.txt, val1.txt, test1.txt   (lines: <class>/<file>.jpg)""",
    tllib="dtd/imagelist/{train,test}.txt (paths relative to dtd/), dtd/images/",
    obtain="pass download=True (torchvision fetches "
           "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz) or extract it into ROOT/dtd/",
    required=["dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt",
              "dtd/dtd/labels/test1.txt"],
)


def _dtd(root: Path, split: str) -> ClassificationDataset:
    parts = ("train", "val") if split == "train" else ("test",)
    objs = [call_torchvision(DTD, tvd.DTD, str(root), split=p, partition=1) for p in parts]
    classes = sorted(p.name for p in (root / "dtd" / "dtd" / "images").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(o._image_files, [index[o.classes[t]] for t in o._labels], classes) for o in objs]
    return _files(DTD, root, "dtd/dtd", split, pairs)


dataset_family(DTD, _dtd, _fetcher(DTD, tvd.DTD), tllib_subdirs=("", "dtd"))

# --- Caltech-101 --------------------------------------------------------------------------------
CALTECH_TRAIN_PER_CLASS = 30

CALTECH = Layout(
    name="caltech101", title="torchvision Caltech101, 101 classes, 30 training images per class",
    num_classes=101,
    expected="""caltech101/101_ObjectCategories/<category>/image_0001.jpg ... (numbered from 1)
caltech101/101_ObjectCategories/BACKGROUND_Google/   (must exist; not a class)""",
    tllib=TLLIB_PLAIN + " (TLlib: 102 classes, background_google included)",
    obtain="pass download=True (torchvision fetches caltech-101.zip from "
           "https://data.caltech.edu/records/mzrjq-6wc02) or extract 101_ObjectCategories.tar.gz into "
           "ROOT/caltech101/",
    required=["caltech101/101_ObjectCategories/BACKGROUND_Google"],
)


def caltech_train_indices(labels, categories, per_class: int = CALTECH_TRAIN_PER_CLASS) -> list[int]:
    """The fixed train part: ``per_class`` images of each class (at least one left for test), drawn
    with a generator seeded by the class name, so the split never depends on the run seed."""
    labels = np.asarray(labels)
    keep = []
    for c, cat in enumerate(categories):
        idx = np.flatnonzero(labels == c)
        k = min(per_class, max(1, len(idx) - 1))
        rng = np.random.default_rng(zlib.crc32(cat.encode()))
        keep.extend(idx[rng.permutation(len(idx))[:k]].tolist())
    return sorted(keep)


def _caltech(root: Path, split: str) -> ClassificationDataset:
    ds = call_torchvision(CALTECH, tvd.Caltech101, str(root), target_type="category")
    folder = root / "caltech101" / "101_ObjectCategories"
    files = [folder / ds.categories[y] / f"image_{i:04d}.jpg" for i, y in zip(ds.index, ds.y)]
    train = set(caltech_train_indices(ds.y, ds.categories))
    keep = [i for i in range(len(files)) if (i in train) == (split == "train")]
    out = _files(CALTECH, root, "caltech101", split,
                 [([files[i] for i in keep], [ds.y[i] for i in keep], ds.categories)])
    out.info["train_per_class"] = CALTECH_TRAIN_PER_CLASS
    return out


dataset_family(CALTECH, _caltech, _fetcher(CALTECH, tvd.Caltech101), tllib_subdirs=("",))

# --- Food-101 -----------------------------------------------------------------------------------
FOOD = Layout(
    name="food101", title="torchvision Food101, train / test", num_classes=101,
    expected="""food-101/meta/train.json, test.json   ({"apple_pie": ["apple_pie/1005649", ...], ...})
food-101/images/<class>/<id>.jpg""",
    obtain="pass download=True (torchvision fetches http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz, 5 GB) "
           "or extract that archive into ROOT",
    required=["food-101/meta/train.json", "food-101/meta/test.json", "food-101/images"],
)


def _food(root: Path, split: str) -> ClassificationDataset:
    ds = call_torchvision(FOOD, tvd.Food101, str(root), split=split)
    return _files(FOOD, root, "food-101", split, [(ds._image_files, ds._labels, ds.classes)])


dataset_family(FOOD, _food, _fetcher(FOOD, tvd.Food101))

# --- SUN397 -------------------------------------------------------------------------------------
SUN_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"
SUN_PARTITION_FILES = {"train": "Training_01.txt", "test": "Testing_01.txt"}
SUN_PARTITION_DIRS = ("SUN397/Partitions", "SUN397", "Partitions")

SUN = Layout(
    name="sun397", title="torchvision SUN397 + the official partition 1", num_classes=397,
    expected="""SUN397/ClassName.txt                 (/a/abbey, /a/apartment_building/outdoor, ...)
SUN397/a/abbey/sun_<x>.jpg ...
SUN397/Partitions/Training_01.txt, Testing_01.txt   (lines: /a/abbey/sun_<x>.jpg)""",
    tllib="SUN397/image_list/{train,test}.txt (paths relative to SUN397/)",
    obtain="pass download=True (torchvision fetches http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz, "
           f"37 GB; the kit adds {SUN_PARTITIONS_URL}) or extract both into ROOT "
           "(the partition files into ROOT/SUN397/Partitions/)",
    required=["SUN397/ClassName.txt"],
)


def _sun_partition(root: Path, split: str) -> Path:
    name = SUN_PARTITION_FILES[split]
    for d in SUN_PARTITION_DIRS:
        if (root / d / name).is_file():
            return root / d / name
    raise DatasetError(f"sun397: partition file {name} not found under {str(root)!r} (looked in "
                       f"{', '.join(SUN_PARTITION_DIRS)}). The kit uses the official partition 1: download "
                       f"{SUN_PARTITIONS_URL} and extract it into ROOT/SUN397/Partitions/.\n{SUN.describe()}")


def _sun(root: Path, split: str) -> ClassificationDataset:
    partition = _sun_partition(root, split)
    ds = call_torchvision(SUN, tvd.SUN397, str(root))
    rel = [line.strip().lstrip("/") for line in partition.read_text().splitlines() if line.strip()]
    labels = []
    for r in rel:
        cls = "/".join(Path(r).parts[1:-1])
        if cls not in ds.class_to_idx:
            raise DatasetError(f"sun397: {partition} names {r!r}, whose class {cls!r} is not in "
                               f"{root / 'SUN397' / 'ClassName.txt'}")
        labels.append(ds.class_to_idx[cls])
    out = _files(SUN, root, "SUN397", split, [([root / "SUN397" / r for r in rel], labels, ds.classes)])
    out.info["partition"] = str(partition)
    return out


def _sun_fetch(root: Path) -> None:
    download(SUN, tvd.SUN397, str(root), download=True)
    if not any((root / d / SUN_PARTITION_FILES["train"]).is_file() for d in SUN_PARTITION_DIRS):
        from torchvision.datasets.utils import download_and_extract_archive
        download(SUN, download_and_extract_archive, SUN_PARTITIONS_URL, download_root=str(root / "SUN397"))


dataset_family(SUN, _sun, _sun_fetch, tllib_subdirs=("", "SUN397"))


# --- CIFAR-10 / CIFAR-100 -----------------------------------------------------------------------
def _without_md5(cls):
    """torchvision's CIFAR class reading the pickles without the md5 check (kept on download)."""
    return type(f"_{cls.__name__}Files", (cls,), {
        "train_list": [[n, None] for n, _ in cls.train_list],
        "test_list": [[n, None] for n, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _cifar_family(name: str, cls, folder: str, archive: str, inner: str, num_classes: int) -> None:
    files = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    layout = Layout(
        name=name, title=f"torchvision {cls.__name__} (python pickles)", num_classes=num_classes,
        expected=f"{folder}/{{{', '.join(files)}}}\n({inner})",
        obtain=f"pass download=True (torchvision fetches https://www.cs.toronto.edu/~kriz/{archive}) or extract "
               "that archive into ROOT",
        required=[f"{folder}/{f}" for f in files],
    )
    reader = _without_md5(cls)

    def native(root: Path, split: str) -> ClassificationDataset:
        ds = call_torchvision(layout, reader, str(root), train=split == "train")
        return ClassificationDataset(list(ds.data), ds.targets, ds.classes, array_image, name=name,
                                     info={"root": str(root / folder), "list_base": str(root / folder),
                                           "layout": "torchvision", "split": split})

    dataset_family(layout, native, _fetcher(layout, cls))


_cifar_family("cifar10", tvd.CIFAR10, "cifar-10-batches-py", "cifar-10-python.tar.gz",
              'batches are pickles {"data": uint8 (N, 3072), "labels": [...]}; batches.meta has "label_names"', 10)
_cifar_family("cifar100", tvd.CIFAR100, "cifar-100-python", "cifar-100-python.tar.gz",
              'train/test are pickles {"data", "fine_labels", ...}; meta has "fine_label_names"', 100)
