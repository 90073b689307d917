"""Runs save their per-image test predictions; the negative-transfer share computed from them."""
import json

import numpy as np
import pytest

from ctlib.analysis import negative_transfer
from ctlib.engine import RunConfig, fit, load_predictions, run_dir


def _config(tmp_path, **kw):
    base = dict(method="erm", dataset="demo", sample_rate=15, backbone="resnet18", pretrained=False, image_size=32,
                batch_size=8, epochs=2, iters_per_epoch=2, results_dir=str(tmp_path), progress=False,
                keep_checkpoint="full")
    return RunConfig(**{**base, **kw})


def test_run_saves_last_epoch_predictions_of_every_head(tmp_path):
    cfg = _config(tmp_path / "a")
    rec = fit(cfg)
    pred = load_predictions(cfg)
    assert set(pred) == {"main", "target"} and pred["main"].shape == (rec["data"]["test_images"],)
    assert rec["test_predictions"] == {"file": "test_predictions.npz", "epoch": 2, "heads": ["main"]}
    top1 = 100 * np.mean(pred["main"] == pred["target"])
    assert top1 == pytest.approx(rec["history"][-1]["test"]["main"]["top1"], abs=1e-3)
    # a run killed after its last epoch's checkpoint but before its record predicts again, to the same result
    cfg_b = _config(tmp_path / "b")
    fit(cfg_b)
    (run_dir(cfg_b) / "record.json").unlink()
    (run_dir(cfg_b) / "test_predictions.npz").unlink()
    fit(cfg_b)
    assert np.array_equal(load_predictions(cfg_b)["main"], pred["main"])
    assert json.loads((run_dir(cfg_b) / "record.json").read_text())["history"] == rec["history"]


def test_missing_predictions_name_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no test predictions for run erm-demo"):
        load_predictions(_config(tmp_path))


def test_negative_transfer_share():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, 200)
    scratch, tuned = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    count = sum(1 for s, t, y in zip(scratch, tuned, target) if s == y and t != y)
    assert negative_transfer(scratch, tuned, target) == pytest.approx(100 * count / 200)
    assert negative_transfer(target, target, target) == 0.0
    with pytest.raises(ValueError, match="same images"):
        negative_transfer(scratch[:10], tuned, target)
