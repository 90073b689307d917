"""The dataset registry on tiny fake datasets in every real on-disk layout (nothing downloads)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_datasets as F
from ctlib.cli import main as cli_main
from ctlib.data import DATASETS, DatasetError, available, build_dataset, get_builder
from ctlib.data.datasets import LAYOUTS, sample_lists
from ctlib.data.datasets.torchvision_sets import caltech_train_indices
from ctlib.data.sampling import SAMPLE_RATES, list_checksum, per_class_count

ELEVEN = ("cub200", "stanford_cars", "aircraft", "oxford_pets", "flowers102", "dtd", "caltech101", "food101",
          "sun397", "cifar10", "cifar100")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline_and_private_cache(monkeypatch, tmp_path):
    """No network (a download attempt fails loudly) and a private sample-list cache folder."""
    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("CTLIB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """A fresh copy of a dataset's fake (per test: sample lists get written beside the data)."""
    def make(name: str, tllib: bool = False) -> Path:
        root = tmp_path_factory.mktemp(f"{name}{'-tllib' if tllib else ''}")
        return F.make_tllib(name, root) if tllib else F.make(name, root)
    return make


def _counts(ds):
    return [c for c in ds.class_counts() if c]


# --- registry ------------------------------------------------------------------------------------
def test_importing_ctlib_data_registers_all_eleven_and_demo():
    assert set(ELEVEN) == set(DATASETS)
    assert set(ELEVEN) | {"demo"} == set(available())
    for name in ELEVEN:
        assert callable(get_builder(name)) and LAYOUTS[name].expected


# --- every dataset, every sample rate, real layout ---------------------------------------------------
@pytest.mark.parametrize("name", ELEVEN)
def test_loads_real_layout_at_every_sample_rate(name, fake_root):
    root = fake_root(name)
    test = build_dataset(name, root, "test")
    assert _counts(test) == [F.TEST_COUNTS[name]] * F.NUM_CLASSES
    assert test.info["sample_rate"] == 100 and test.info["split"] == "test"
    full = build_dataset(name, root, "train")
    assert full.info["sample_list_source"] == "full"
    assert full.classes == test.classes and full.num_classes == len(full.classes) >= F.NUM_CLASSES
    assert not {str(s) for s in full.samples if isinstance(s, str)} & {s for s in test.samples if isinstance(s, str)}
    for rate in SAMPLE_RATES:
        ds = build_dataset(name, root, "train", rate, transform=lambda im: torch.tensor(np.asarray(im)))
        want = per_class_count(F.TRAIN_PER_CLASS, rate)
        assert _counts(ds) == [want] * F.NUM_CLASSES, rate
        if isinstance(ds.samples[0], str):
            assert set(ds.samples) <= set(full.samples)
        img, label = ds[0]
        assert img.shape == (32, 32, 3) if name.startswith("cifar") else img.shape == (8, 8, 3)  # grey → RGB
        assert 0 <= label < ds.num_classes
        assert ds.info["sample_rate"] == rate and len(ds.info["sample_list_checksum"]) == 64
        if rate < 100:
            assert ds.info["sample_list_source"] == "generated"
            again = build_dataset(name, root, "train", rate)
            assert again.info["sample_list_source"] == "cached"
            assert again.info["sample_list_checksum"] == ds.info["sample_list_checksum"]
            assert [str(s) for s in again.samples] == [str(s) for s in ds.samples]


def test_greyscale_images_come_back_rgb(fake_root):
    ds = build_dataset("cub200", fake_root("cub200"), "train")
    from PIL import Image
    with Image.open(ds.samples[0]) as raw:
        assert raw.mode == "L"
    assert ds.load_image(0).mode == "RGB"


def test_aircraft_variant_names_keep_their_spaces(fake_root):
    ds = build_dataset("aircraft", fake_root("aircraft"), "train")
    assert ds.classes[:2] == ["Boeing 707", "Boeing 717"]


def test_sun397_uses_partition_1_only(fake_root):
    ds = build_dataset("sun397", fake_root("sun397"), "train")
    assert not any("extra" in s for s in ds.samples) and "bakery/shop" in ds.classes


def test_caltech_split_is_fixed_and_disjoint(fake_root):
    root = fake_root("caltech101")
    a = build_dataset("caltech101", root, "train", seed=0)
    b = build_dataset("caltech101", root, "train", seed=5)
    test = build_dataset("caltech101", root, "test")
    assert a.samples == b.samples and not set(a.samples) & set(test.samples)
    labels = np.repeat(np.arange(3), 40)
    idx = caltech_train_indices(labels, ["x", "y", "z"])
    assert np.bincount(labels[idx]).tolist() == [30, 30, 30]


# --- TLlib's layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(F.TLLIB))
def test_loads_tllib_layout_at_every_sample_rate(name, fake_root):
    root = fake_root(name, tllib=True)
    sub, list_dir, has_rates = F.TLLIB[name]
    test = build_dataset(name, root, "test")
    assert test.info["layout"] == "tllib" and _counts(test) == [F.TEST_PER_CLASS] * F.NUM_CLASSES
    for rate in SAMPLE_RATES:
        ds = build_dataset(name, root, "train", rate)
        assert ds.info["layout"] == "tllib" and ds[0][0].mode == "RGB"
        if has_rates or rate == 100:
            path = Path(root) / sub / list_dir / (f"train_{rate}.txt" if has_rates else "train.txt")
            assert ds.info["sample_list_source"] == "tllib"
            assert ds.info["sample_list_path"] == str(path)
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            assert ds.info["sample_list_checksum"] == list_checksum(lines)
            assert _counts(ds) == [F.TLLIB_RATE_COUNTS[rate]] * F.NUM_CLASSES      # verbatim, not re-drawn
        else:
            assert ds.info["sample_list_source"] == "generated"
            assert _counts(ds) == [per_class_count(F.TRAIN_PER_CLASS, rate)] * F.NUM_CLASSES


def test_tllib_list_with_a_bad_line_names_file_and_line(fake_root):
    root = fake_root("cub200", tllib=True)
    with open(root / "image_list" / "test.txt", "a") as f:
        f.write("train/x.jpg not-a-label\n")
    with pytest.raises(DatasetError, match=r"test\.txt, line 10: expected '<relative path> <integer label>'"):
        build_dataset("cub200", root, "test")


# --- generated sample lists --------------------------------------------------------------------------
def test_generated_lists_are_deterministic_balanced_and_written_beside_the_data(fake_root, tmp_path, monkeypatch):
    root = fake_root("food101")
    ds = build_dataset("food101", root, "train", 30, seed=3)
    path = Path(ds.info["sample_list_path"])
    assert path.parent == root / "food-101" / sample_lists.BESIDE_DIR and path.is_file()
    header, *lines = path.read_text().splitlines()
    assert f"sha256={ds.info['sample_list_checksum']}" in header and "seed=3" in header
    assert all(line.startswith("images/") for line in lines)
    # same data, fresh location → the same list; another seed → another list, same balance
    path.unlink()
    monkeypatch.setenv("CTLIB_CACHE_DIR", str(tmp_path / "other"))
    again = build_dataset("food101", root, "train", 30, seed=3)
    assert again.info["sample_list_checksum"] == ds.info["sample_list_checksum"]
    other = build_dataset("food101", root, "train", 30, seed=4)
    assert _counts(other) == _counts(ds) == [2, 2, 2]
    # nested rates, at least one image per class at 15 %
    small = build_dataset("food101", root, "train", 15, seed=3)
    assert _counts(small) == [1, 1, 1] and set(small.samples) <= set(again.samples)


def test_unwritable_data_folder_falls_back_to_the_cache(fake_root, tmp_path):
    root = fake_root("dtd")
    (root / "dtd" / "dtd" / sample_lists.BESIDE_DIR).write_text("a file where the folder should be")
    ds = build_dataset("dtd", root, "train", 50)
    path = Path(ds.info["sample_list_path"])
    assert path.is_relative_to(tmp_path / "cache") and path.is_file()
    assert build_dataset("dtd", root, "train", 50).info["sample_list_source"] == "cached"


def test_corrupt_or_stale_cached_list_is_reported(fake_root):
    root = fake_root("oxford_pets")
    path = Path(build_dataset("oxford_pets", root, "train", 30).info["sample_list_path"])
    text = path.read_text()
    path.write_text(text.replace(" 0\n", " 1\n", 1))
    with pytest.raises(DatasetError, match="corrupt.*Delete it"):
        build_dataset("oxford_pets", root, "train", 30)
    path.unlink()
    assert build_dataset("oxford_pets", root, "train", 30).info["sample_list_source"] == "generated"
    victim = root / "oxford-iiit-pet" / path.read_text().splitlines()[1].rsplit(" ", 1)[0]
    ann = root / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    ann.write_text("".join(line + "\n" for line in ann.read_text().splitlines() if victim.stem not in line))
    with pytest.raises(DatasetError, match="not in the training split now"):
        build_dataset("oxford_pets", root, "train", 30)


def test_demo_keeps_working_with_in_memory_lists():
    ds = build_dataset("demo", split="train", sample_rate=15)
    assert len(ds) == 300 and ds.info["sample_list_source"] == "generated" and ds.info["sample_list_path"] is None
    assert len(build_dataset("demo", None, "test")) == 1000
    assert get_builder("demo")(None, "train").num_classes == 10


# --- validation split (honest protocol) --------------------------------------------------------------
def test_validation_split_is_carved_deterministically_from_the_training_list(fake_root):
    root = fake_root("cifar10")
    whole = build_dataset("cifar10", root, "train", 100)
    train = build_dataset("cifar10", root, "train", 100, val_fraction=0.3)
    val = build_dataset("cifar10", root, "val", 100, val_fraction=0.3)
    assert len(train) + len(val) == len(whole) and _counts(val) == [2, 2, 2]
    def ids(ds):
        return {a.tobytes() for a in ds.samples}
    assert ids(train) | ids(val) == ids(whole) and not ids(train) & ids(val)
    assert val.info["val_fraction"] == 0.3 and val.info["split"] == "val"
    assert build_dataset("cifar10", root, "val", 100, val_fraction=0.3).info["val_checksum"] == val.info["val_checksum"]
    assert len(build_dataset("cifar10", root, "val")) == 3   # default fraction 0.1, at least one per class


# --- failures a user can act on -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ELEVEN)
def test_missing_root_or_wrong_layout_names_dataset_layout_and_source(name, tmp_path):
    with pytest.raises(DatasetError) as e:
        build_dataset(name, tmp_path / "nowhere")
    msg = str(e.value)
    assert msg.startswith(f"{name}: dataset root") and "Expected layout under ROOT" in msg
    assert "How to obtain it" in msg and "data/README.md" in msg
    with pytest.raises(DatasetError, match=rf"^{name}: dataset not found or incomplete under .* \(missing: "):
        build_dataset(name, tmp_path, "test")
    with pytest.raises(DatasetError, match="no dataset root given"):
        build_dataset(name, None)


def test_malformed_annotation_file_is_a_dataset_error(fake_root):
    root = fake_root("stanford_cars")
    (root / "stanford_cars" / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="stanford_cars: torchvision's loader failed on this folder"):
        build_dataset("stanford_cars", root)


def test_unreadable_image_names_the_file_and_can_be_skipped(fake_root):
    root = fake_root("cub200")
    ds = build_dataset("cub200", root, "test")
    bad = Path(ds.samples[1])
    bad.write_bytes(b"garbage, not a jpeg")
    with pytest.raises(DatasetError, match=rf"cannot read image {bad}.*skip_bad_images=True"):
        ds[1]
    missing = Path(ds.samples[2])
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"image file missing: {missing}"):
        ds[2]
    kept = build_dataset("cub200", root, "test", skip_bad_images=True)
    assert len(kept) == len(ds) - 2 and kept.info["skipped_images"] == 2
    assert set(kept.info["skipped_files"]) == {str(bad), str(missing)}
    assert all(kept[i][0].mode == "RGB" for i in range(len(kept)))
    assert build_dataset("cub200", fake_root("cub200"), "test", skip_bad_images=True).info["skipped_images"] == 0


def test_unknown_dataset_rate_or_split_lists_the_choices():
    with pytest.raises(DatasetError, match=r"unknown dataset 'cub'.*'cub200'.*'sun397'"):
        build_dataset("cub", "/tmp")
    with pytest.raises(ValueError, match=r"unknown sample rate 20: choose one of \[15, 30, 50, 100\]"):
        build_dataset("demo", sample_rate=20)
    with pytest.raises(DatasetError, match=r"unknown split 'valid'.*\['train', 'val', 'test'\]"):
        build_dataset("demo", split="valid")


def test_failed_downloads_raise(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="(?s)stanford_cars: download failed.*Obtain it manually: .*mirror"):
        build_dataset("stanford_cars", tmp_path / "cars", download=True)

    def boom(url, *args, **kwargs):
        raise OSError(f"cannot reach {url}")
    import torchvision.datasets.food101 as tv_food
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_food, "download_and_extract_archive", boom)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", boom)
    with pytest.raises(DatasetError, match=r"food101: download failed \(OSError: cannot reach http.*food-101"):
        build_dataset("food101", tmp_path / "food", download=True)
    with pytest.raises(DatasetError, match=r"(?s)cub200: download failed .*CUB_200_2011\.tgz"):
        build_dataset("cub200", tmp_path / "cub", download=True)
    # the network guard: a download that slipped through would fail, never silently succeed
    with pytest.raises(DatasetError, match="aircraft: download failed"):
        build_dataset("aircraft", tmp_path / "air", download=True)


# --- ctlib data check ----------------------------------------------------------------------------------
def test_cli_check_prints_counts_and_passes(fake_root, capsys):
    root = fake_root("aircraft")
    assert cli_main(["data", "check", "aircraft", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "classes: 3 (standard: 100)" in out and out.rstrip().endswith("OK")
    assert "train        21        3          7-7           0" in out
    assert "test          9        3          3-3           0" in out
    assert "images opened: 30" in out and "15 %: generated on first use" in out


def test_cli_check_reports_problems_and_exits_non_zero(fake_root, tmp_path, capsys):
    root = fake_root("cub200", tllib=True)
    ds = build_dataset("cub200", root, "train")
    Path(ds.samples[0]).write_bytes(b"\x00" * 10)
    assert cli_main(["data", "check", "cub200", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"cannot read image {ds.samples[0]}" in out and "FAILED" in out and "15 %: TLlib list" in out
    assert cli_main(["data", "check", "sun397", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "sun397: dataset not found or incomplete" in out and "SUN397/ClassName.txt" in out
    assert out.count("Expected layout") == 1
    assert cli_main(["data", "check", "birds", str(tmp_path)]) == 1
    assert "unknown dataset 'birds': choose one of" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main(["data"])
    assert e.value.code == 2


def test_python_m_ctlib_and_the_console_script(tmp_path):
    env = {**os.environ, "CTLIB_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "ctlib", "data", "check", "demo", "--no-images"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "train      2000       10      200-200" in run.stdout
    script = Path(sys.executable).parent / "ctlib"
    if script.exists():
        run = subprocess.run([str(script), "data", "check", "cifar10", str(tmp_path)], capture_output=True,
                             text=True, env=env, timeout=120)
        assert run.returncode == 1 and "cifar10: dataset not found" in run.stdout
