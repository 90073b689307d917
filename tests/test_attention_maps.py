"""Fig. 1's Eigen-Grad-CAM maps (ctlib.attention_maps) on two tiny trained runs (ERM, Concept-Tuning)."""
import copy
import shutil

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from ctlib.attention_maps import (MainHeadModel, attention_maps, eigen_grad_cam, main_encoder,  # noqa: E402
                                  method_labels, negative_transfer_indices, spread_indices)
from ctlib.engine import fit, load_predictions  # noqa: E402
from ctlib.experiments import run_config  # noqa: E402
from ctlib.methods import build_method  # noqa: E402
from ctlib.models import build_backbone  # noqa: E402

INDICES = [0, 137, 500, 999]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 3-step runs on the demo set at 64 px (models kept)."""
    results = tmp_path_factory.mktemp("cam") / "runs"
    configs = [run_config("smoke", m, results_dir=str(results), batch_size=8, epochs=1, iters_per_epoch=3,
                          progress=False) for m in ("erm", "concept_tuning")]
    for c in configs:
        fit(c)
    return configs


@pytest.fixture(scope="module")
def result(runs):
    return attention_maps(runs, INDICES)


def test_maps_are_image_sized_scaled_and_per_image(result):
    assert list(result.maps) == ["fine-tuning", "Concept-Tuning"]
    for maps in result.maps.values():
        assert maps.shape == (len(INDICES), 64, 64)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert maps.max() > 0.99                                  # scaled to [0, 1] per image
        assert not np.allclose(maps[0], maps[1], atol=1e-3)       # two images, two maps
    assert result.images.shape == (len(INDICES), 64, 64, 3)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_table_holds_the_runs_saved_predictions(runs, result):
    from ctlib.data import build_dataset

    classes = build_dataset("demo", split="test").classes
    table = result.table
    assert len(table) == len(INDICES) * len(runs)
    assert list(table.columns) == ["image", "method", "true_class", "predicted_class", "correct"]
    for config, title in zip(runs, method_labels(runs)):
        saved = load_predictions(config)
        rows = table[table["method"] == title]
        assert rows["image"].tolist() == INDICES
        assert rows["predicted_class"].tolist() == [classes[p] for p in saved["main"][INDICES]]
        assert rows["true_class"].tolist() == [classes[t] for t in saved["target"][INDICES]]
        assert rows["correct"].tolist() == (saved["main"][INDICES] == saved["target"][INDICES]).tolist()


def test_figure_has_input_and_one_column_per_run(result):
    fig = result.figure
    assert len(fig.axes) == len(INDICES) * 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("fine-tuning\n") and titles[2].startswith("Concept-Tuning\n")
    assert all(t.endswith("\u2713") or "\u2717" in t for i, t in enumerate(titles) if i % 3)


def test_prediction_target_explains_the_prediction(runs, result):
    """Explaining the prediction gives the label's map where the run is right, another where it is wrong."""
    pred = attention_maps(runs[:1], INDICES, target="prediction")
    rows = result.table[result.table["method"] == "fine-tuning"]
    diffs = [float(np.abs(pred.maps["fine-tuning"][k] - result.maps["fine-tuning"][k]).max())
             for k in range(len(rows))]
    # where the run is right both explain the same class; where it is wrong another class (whose 2×2 smoke map
    # may still coincide with the label's after scaling, so only "some wrong image differs" is required)
    assert all(d < 1e-4 for d, ok in zip(diffs, rows["correct"]) if ok)
    assert any(d > 1e-3 for d, ok in zip(diffs, rows["correct"]) if not ok)


def test_wrapper_is_the_main_head_with_gradients_through_a_frozen_backbone():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    pretrained = build_backbone("efficientnet_lite0", True)
    for name, args in [("scratch", {}), ("linear_probe", {}), ("erm", {}), ("bi_tuning", {}), ("co_tuning", {}),
                       ("concept_tuning", {"confusing": 3})]:
        method = build_method(name, copy.deepcopy(pretrained), 10, 64, args).eval()
        model = MainHeadModel(method)
        model.check(images)                                    # same logits as heads()["main"]
        backbone, _ = main_encoder(method)
        if name in ("bi_tuning", "concept_tuning"):
            assert backbone is method.encoder_q.backbone      # the query encoder, not the momentum key one
        if name == "linear_probe":
            maps, _ = eigen_grad_cam(method, images, [1, 2])   # frozen parameters: the gradient still flows
            assert np.isfinite(maps).all() and maps.max() > 0.99


def test_clear_errors(runs, tmp_path):
    with pytest.raises(IndexError, match="1000 images"):
        attention_maps(runs, [0, 1000])
    with pytest.raises(ValueError, match="label"):
        attention_maps(runs, [0], target="truth")
    other = runs[0].replace(seed=7)
    with pytest.raises(FileNotFoundError, match="fit_grid"):
        attention_maps([other], [0])
    with pytest.raises(FileNotFoundError, match="1 of the 2 runs"):
        attention_maps([runs[0], other], [0])
    # a finished run whose model was not kept
    src = runs[0]
    copy = src.replace(results_dir=str(tmp_path / "runs"))
    shutil.copytree(f"{src.results_dir}/{src.run_id()}", f"{copy.results_dir}/{copy.run_id()}")
    (tmp_path / "runs" / copy.run_id() / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model was not kept"):
        attention_maps([copy], [0])


def test_negative_transfer_indices(runs):
    erm, ct = (load_predictions(c) for c in runs)
    picked = negative_transfer_indices(runs, 5, reference="erm", others=("concept_tuning",))
    expected = np.flatnonzero((erm["main"] == erm["target"]) & (ct["main"] != ct["target"]))
    assert len(picked) == min(5, len(expected)) and set(picked) <= set(expected.tolist())
    with pytest.raises(ValueError, match="'scratch' run"):
        negative_transfer_indices(runs, 5)


def test_spread_indices():
    assert spread_indices(4, 1000) == [0, 250, 500, 750]
    assert spread_indices(20, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="positive"):
        spread_indices(0, 10)
