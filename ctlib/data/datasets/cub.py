"""CUB-200-2011 from its official layout (torchvision has no class for it), or TLlib's."""
from __future__ import annotations

from pathlib import Path

from ..base import DatasetError
from ._common import Layout, download, from_files
from .builder import dataset_family

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
FOLDER = "CUB_200_2011"
FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt")

LAYOUT = Layout(
    name="cub200", title="CUB-200-2011, official layout", num_classes=200,
    expected=f"""{FOLDER}/images.txt              <image id> <class folder>/<file>.jpg
{FOLDER}/train_test_split.txt    <image id> <1 = train, 0 = test>
{FOLDER}/image_class_labels.txt  <image id> <class id, 1-based>
{FOLDER}/classes.txt             <class id> <class name>   (optional: names default to the folders)
{FOLDER}/images/<class folder>/<file>.jpg""",
    tllib="image_list/{train_100,train_50,train_30,train_15,test}.txt, train/, test/",
    obtain=f"download CUB_200_2011.tgz from {URL} (or https://www.vision.caltech.edu/datasets/cub_200_2011/) "
           "and extract it into ROOT, or pass download=True",
    required=[f"{FOLDER}/{f}" for f in FILES] + [f"{FOLDER}/images"],
)


def _table(path: Path) -> dict[int, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            key, _, value = line.strip().partition(" ")
            if not key.isdigit() or not value:
                raise DatasetError(f"cub200: {path}, line {n}: expected '<id> <value>', got {line!r}")
            out[int(key)] = value.strip()
    return out


def _load(root: Path, split: str):
    base = root / FOLDER
    images, is_train, labels = (_table(base / f) for f in FILES)
    missing = sorted(set(images) - set(is_train) | set(images) - set(labels))
    if missing:
        raise DatasetError(f"cub200: image ids {missing[:5]} of images.txt have no split or label in "
                           f"{base}; the annotation files are incomplete.")
    if (base / "classes.txt").is_file():
        names = _table(base / "classes.txt")
        classes = [names[k] for k in sorted(names)]
    else:
        folders = {int(labels[i]): Path(images[i]).parent.name for i in images}
        classes = [folders.get(k, str(k)) for k in range(1, max(folders) + 1)]
    want = "1" if split == "train" else "0"
    ids = [i for i in sorted(images) if is_train[i] == want]
    return from_files("cub200", [base / "images" / images[i] for i in ids], [int(labels[i]) - 1 for i in ids],
                      classes, base, "official", split=split)


def _fetch(root: Path) -> None:
    if not (root / FOLDER / FILES[0]).is_file():
        from torchvision.datasets.utils import download_and_extract_archive
        download(LAYOUT, download_and_extract_archive, URL, download_root=str(root), filename="CUB_200_2011.tgz")


dataset_family(LAYOUT, _load, _fetch, tllib_subdirs=("",))
