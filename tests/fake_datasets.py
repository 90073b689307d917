"""Tiny fake datasets in each real on-disk layout (torchvision's, CUB's official one, TLlib's), for
offline tests. Every fake has ``NUM_CLASSES`` classes, ``TRAIN_PER_CLASS`` training and
``TEST_PER_CLASS`` test images per class (8x8 JPEGs; the first image of each fake is greyscale),
so every dataset loads with the same counts. ``make(name, root)`` builds one and returns the
folder to pass as ROOT.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 3
TRAIN_PER_CLASS = 7
TEST_PER_CLASS = 3
RATES = (15, 30, 50, 100)


def image(path: Path, seed: int, grey: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (8, 8) if grey else (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _items():
    """(class index, image number within the class, is_train) for every image, classes in order."""
    for c in range(NUM_CLASSES):
        for k in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            yield c, k, k < TRAIN_PER_CLASS


# --- CUB-200-2011 (official) ---------------------------------------------------------------------
def make_cub200(root: Path) -> Path:
    base = root / "CUB_200_2011"
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(NUM_CLASSES)]
    images, split, labels = [], [], []
    for n, (c, k, train) in enumerate(_items(), 1):
        rel = f"{classes[c]}/Bird_{c}_{k:04d}.jpg"
        image(base / "images" / rel, n, grey=n == 1)
        images.append(f"{n} {rel}")
        split.append(f"{n} {int(train)}")
        labels.append(f"{n} {c + 1}")
    write(base / "images.txt", "\n".join(images) + "\n")
    write(base / "train_test_split.txt", "\n".join(split) + "\n")
    write(base / "image_class_labels.txt", "\n".join(labels) + "\n")
    write(base / "classes.txt", "".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    return root


# --- Stanford Cars ------------------------------------------------------------------------------
def _cars_annos(path: Path, rows) -> None:
    from scipy.io import savemat
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (cls, fname) in enumerate(rows):
        arr[0, i] = (np.array([[0]]), np.array([[0]]), np.array([[7]]), np.array([[7]]), np.array([[cls]]), fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"annotations": arr})


def make_stanford_cars(root: Path) -> Path:
    from scipy.io import savemat
    base = root / "stanford_cars"
    rows = {True: [], False: []}
    for n, (c, k, train) in enumerate(_items(), 1):
        folder = "cars_train" if train else "cars_test"
        fname = f"{n:05d}.jpg"
        image(base / folder / fname, n, grey=n == 1)
        rows[train].append((c + 1, fname))
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(str(base / "devkit" / "cars_meta.mat"),
            {"class_names": np.array([[f"Car Model {c} 2012" for c in range(NUM_CLASSES)]], dtype=object)})
    _cars_annos(base / "devkit" / "cars_train_annos.mat", rows[True])
    _cars_annos(base / "cars_test_annos_withlabels.mat", rows[False])
    return root


# --- FGVC Aircraft ------------------------------------------------------------------------------
def make_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"Boeing 7{c}7" for c in range(NUM_CLASSES)]   # names with spaces, as real ones
    lines = {True: [], False: []}
    for n, (c, k, train) in enumerate(_items(), 1):
        image_id = f"{1000000 + n:07d}"
        image(data / "images" / f"{image_id}.jpg", n, grey=n == 1)
        lines[train].append(f"{image_id} {variants[c]}")
    write(data / "variants.txt", "\n".join(variants) + "\n")
    write(data / "images_variant_trainval.txt", "\n".join(lines[True]) + "\n")
    write(data / "images_variant_test.txt", "\n".join(lines[False]) + "\n")
    return root


# --- Oxford-IIIT Pets ---------------------------------------------------------------------------
def make_oxford_pets(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    breeds = ["Abyssinian", "american_bulldog", "Bengal"][:NUM_CLASSES]
    lines = {True: [], False: []}
    for n, (c, k, train) in enumerate(_items(), 1):
        image_id = f"{breeds[c]}_{k + 1}"
        image(base / "images" / f"{image_id}.jpg", n, grey=n == 1)
        lines[train].append(f"{image_id} {c + 1} {1 + c % 2} {k + 1}")
    write(base / "annotations" / "trainval.txt", "\n".join(lines[True]) + "\n")
    write(base / "annotations" / "test.txt", "\n".join(lines[False]) + "\n")
    return root


# --- Flowers102 ---------------------------------------------------------------------------------
def make_flowers102(root: Path) -> Path:
    from scipy.io import savemat
    base = root / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for n, (c, k, train) in enumerate(_items(), 1):
        image(base / "jpg" / f"image_{n:05d}.jpg", n, grey=n == 1)
        labels.append(c + 1)
        ids["trnid" if k < 4 else "valid" if train else "tstid"].append(n)   # train = trnid + valid
    savemat(str(base / "imagelabels.mat"), {"labels": np.array([labels])})
    savemat(str(base / "setid.mat"), {k: np.array([v]) for k, v in ids.items()})
    return root


# --- DTD ----------------------------------------------------------------------------------------
def make_dtd(root: Path) -> Path:
    base = root / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"][:NUM_CLASSES]
    lines = {"train1": [], "val1": [], "test1": []}
    for n, (c, k, train) in enumerate(_items(), 1):
        rel = f"{classes[c]}/{classes[c]}_{k:04d}.jpg"
        image(base / "images" / rel, n, grey=n == 1)
        lines["train1" if k < 4 else "val1" if train else "test1"].append(rel)
    for part in ("train", "val", "test"):   # other partitions exist in the real folder: a decoy
        for i in (1, 2):
            write(base / "labels" / f"{part}{i}.txt", "\n".join(lines[f"{part}1"] if i == 1 else lines["test1"]) + "\n")
    return root


# --- Caltech-101 --------------------------------------------------------------------------------
def make_caltech101(root: Path) -> Path:
    """TEST_PER_CLASS must be 1 here in effect: the kit keeps min(30, n - 1) training images per class,
    so a class of TRAIN_PER_CLASS + 1 images gives TRAIN_PER_CLASS / 1."""
    base = root / "caltech101" / "101_ObjectCategories"
    cats = ["accordion", "airplanes", "anchor"][:NUM_CLASSES]
    n = 0
    for c, cat in enumerate(cats):
        for k in range(TRAIN_PER_CLASS + 1):
            n += 1
            image(base / cat / f"image_{k + 1:04d}.jpg", n, grey=n == 1)
    image(base / "BACKGROUND_Google" / "image_0001.jpg", 999)
    return root


# --- Food-101 -----------------------------------------------------------------------------------
def make_food101(root: Path) -> Path:
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"][:NUM_CLASSES]
    meta = {"train": {c: [] for c in classes}, "test": {c: [] for c in classes}}
    for n, (c, k, train) in enumerate(_items(), 1):
        image_id = f"{classes[c]}/{100000 + n}"
        image(base / "images" / f"{image_id}.jpg", n, grey=n == 1)
        meta["train" if train else "test"][classes[c]].append(image_id)
    for split in meta:
        write(base / "meta" / f"{split}.json", json.dumps(meta[split]))
    return root


# --- SUN397 -------------------------------------------------------------------------------------
def make_sun397(root: Path) -> Path:
    base = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/canyon"][:NUM_CLASSES]   # one two-level class name
    parts = {True: [], False: []}
    for n, (c, k, train) in enumerate(_items(), 1):
        rel = f"{classes[c]}/sun_{n:06d}.jpg"
        image(base / rel.lstrip("/"), n, grey=n == 1)
        parts[train].append(rel)
    for c, cls in enumerate(classes):   # images outside partition 1, as in the real folder
        image(base / cls.lstrip("/") / f"sun_extra{c}.jpg", 500 + c)
    write(base / "ClassName.txt", "\n".join(classes) + "\n")
    write(base / "Partitions" / "Training_01.txt", "\n".join(parts[True]) + "\n")
    write(base / "Partitions" / "Testing_01.txt", "\n".join(parts[False]) + "\n")
    return root


# --- CIFAR-10 / CIFAR-100 -----------------------------------------------------------------------
def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_arrays(train: bool):
    rng = np.random.default_rng(int(train))
    labels = [c for c, k, t in _items() if t == train]
    return rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels


def make_cifar10(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    data, labels = _cifar_arrays(True)
    chunks = np.array_split(np.arange(len(labels)), 5)
    for i, idx in enumerate(chunks, 1):
        _pickle(base / f"data_batch_{i}", {"data": data[idx], "labels": [labels[j] for j in idx]})
    data, labels = _cifar_arrays(False)
    _pickle(base / "test_batch", {"data": data, "labels": labels})
    _pickle(base / "batches.meta", {"label_names": [f"class{c}" for c in range(NUM_CLASSES)]})
    return root


def make_cifar100(root: Path) -> Path:
    base = root / "cifar-100-python"
    for split in ("train", "test"):
        data, labels = _cifar_arrays(split == "train")
        _pickle(base / split, {"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)})
    _pickle(base / "meta", {"fine_label_names": [f"fine{c}" for c in range(NUM_CLASSES)]})
    return root


MAKERS = {
    "cub200": make_cub200, "stanford_cars": make_stanford_cars, "aircraft": make_aircraft,
    "oxford_pets": make_oxford_pets, "flowers102": make_flowers102, "dtd": make_dtd,
    "caltech101": make_caltech101, "food101": make_food101, "sun397": make_sun397,
    "cifar10": make_cifar10, "cifar100": make_cifar100,
}

#: test images per class of each fake (Caltech-101's split keeps min(30, n - 1) for training)
TEST_COUNTS = {name: 1 if name == "caltech101" else TEST_PER_CLASS for name in MAKERS}


def make(name: str, root: Path) -> Path:
    return MAKERS[name](Path(root))


# --- TLlib's list layout ------------------------------------------------------------------------
#: dataset -> (sub-folder of ROOT holding the list folder, list folder name, has train_<rate>.txt)
TLLIB = {
    "cub200": ("", "image_list", True), "stanford_cars": ("", "image_list", True),
    "aircraft": ("", "image_list", True), "oxford_pets": ("", "image_list", True),
    "caltech101": ("", "image_list", False), "flowers102": ("", "image_list", False),
    "dtd": ("dtd", "imagelist", False), "sun397": ("SUN397", "image_list", False),
}

#: TLlib's per-rate lists keep this many training images per class (any fixed subset will do)
TLLIB_RATE_COUNTS = {15: 1, 30: 2, 50: 4, 100: TRAIN_PER_CLASS}


def make_tllib(name: str, root: Path) -> Path:
    """TLlib's layout: ``<sub>/<list dir>/*.txt`` with ``<relative path> <label>`` lines."""
    sub, list_dir, rates = TLLIB[name]
    base = Path(root) / sub if sub else Path(root)
    lines = {"train": {r: [] for r in RATES}, "test": []}
    for n, (c, k, train) in enumerate(_items(), 1):
        rel = f"{'train' if train else 'test'}/{c:03d}.class_{c}/{name}_{n:04d}.jpg"
        image(base / rel, n, grey=n == 1)
        if not train:
            lines["test"].append(f"{rel} {c}")
            continue
        for r in RATES:
            if k < TLLIB_RATE_COUNTS[r]:
                lines["train"][r].append(f"{rel} {c}")
    write(base / list_dir / "test.txt", "\n".join(lines["test"]) + "\n")
    if rates:
        for r in RATES:
            write(base / list_dir / f"train_{r}.txt", "\n".join(lines["train"][r]) + "\n")
    else:
        write(base / list_dir / "train.txt", "\n".join(lines["train"][100]) + "\n")
    return Path(root)
