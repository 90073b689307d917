"""Build the embedded demo dataset (a class-balanced Fashion-MNIST subset) reproducibly.

Source: Debian package ``dataset-fashion-mnist`` (Zalando Research, MIT licence), which
installs the original IDX files under /usr/share/datasets/fashion-mnist/.

    apt-get install -y --no-install-recommends dataset-fashion-mnist
    python scripts/build_embedded_data.py            # writes data/fashion_mnist_small.npz

The subset takes, per class, the first ``--train-per-class`` images of a seeded permutation of
the official training split and the first ``--test-per-class`` of the official test split.
Same inputs and arguments give a byte-identical file.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(len(labels))
    keep = np.concatenate([order[labels[order] == c][:per_class] for c in range(len(CLASSES))])
    return np.sort(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "fashion_mnist_small.npz")
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source} not found: apt-get install dataset-fashion-mnist")

    rng = np.random.default_rng(args.seed)
    out = {}
    for split, prefix, n in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        idx = pick(labels, n, rng)
        out[f"{split}_images"] = images[idx]
        out[f"{split}_labels"] = labels[idx].astype(np.int64)
        out[f"{split}_source_index"] = idx.astype(np.int64)
    out["classes"] = np.array(CLASSES)

    buf = io.BytesIO()
    np.savez_compressed(buf, **out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(buf.getvalue())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 "
          f"{hashlib.sha256(buf.getvalue()).hexdigest()[:16]}): "
          f"{len(out['train_labels'])} train / {len(out['test_labels'])} test images")


if __name__ == "__main__":
    main()
