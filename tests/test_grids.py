"""The notebooks' grids (ctlib.grids), their tables (ctlib.tables) and analyses (ctlib.analysis) on tiny
real runs, the cpu profile, the estimate, and bad input."""
import numpy as np
import pandas as pd
import pytest
import torch

from ctlib.analysis import cost_frame, negative_transfer_frame
from ctlib.experiments import run_config
from ctlib.grid_fit import describe_estimate, estimate, fit_grid, is_finished
from ctlib.grids import NOTEBOOKS, GridError, moco_standin, table_grid
from ctlib.models import build_backbone
from ctlib.tables import accuracy_display, add_references, grid_frame, mean_std, summarize

TINY = dict(epochs=1, iters_per_epoch=2, batch_size=8)


def test_every_notebook_has_a_smoke_grid_and_runs_are_shared(tmp_path):
    grids = {n: table_grid(n, "smoke", results_dir=tmp_path) for n in NOTEBOOKS}
    ids = {n: {c.run_id() for c in g.configs} for n, g in grids.items()}
    # the fine-tuning runs of the main table serve negative transfer, attention maps and cost: same run ids
    assert ids["negative_transfer"] == ids["cost"] == ids["fgvc_supervised"]
    assert ids["attention_maps"] <= ids["fgvc_supervised"]
    full_ct = {c.run_id() for c in grids["fgvc_supervised"].configs if c.method == "concept_tuning"}
    assert full_ct <= ids["ablation"] and full_ct <= ids["sensitivity"]
    # a sweep's default value is the full method's run; the other values are runs of their own
    sens = grids["sensitivity"]
    # smoke sweeps K 4/8, T 0.07/0.2, confusing 3/9, num_patches 4/9, box_size 12/18: one default each
    assert len(sens.runs) == 10 and len(sens.unique_configs()) == 1 + 5
    for setting in ("K", "T", "confusing", "num_patches", "box_size"):
        shared = [r.labels["value"] for r in sens.runs if r.labels["setting"] == setting and r.config.run_id() in full_ct]
        assert shared == [{"K": 8, "T": 0.07, "confusing": 9, "num_patches": 9, "box_size": 18}[setting]]
    assert all(g.standins and "demo set" in g.standins[0] for g in grids.values())
    assert {r.labels["variant"] for r in grids["ablation"].runs} >= {"front-door head only (no contrastive loss)",
                                                                     "ERM (fine-tuning)", "Concept-Tuning (full)"}
    only_head = next(r.config for r in grids["ablation"].runs if r.labels["variant"].startswith("front-door head only"))
    assert only_head.method_args["concept_loss"] is False and only_head.method_args["image_loss"] is False
    resnet = [c for c in grids["architectures"].configs if c.backbone == "resnet18"]
    assert resnet and all(c.pretrained is False for c in resnet)
    assert all(str(c.results_dir) == str(tmp_path / "runs") for c in grids["cost"].configs)


def test_moco_standin_is_a_moco_layout_file_of_the_packaged_weights(tmp_path):
    grid = table_grid("fgvc_selfsupervised", "smoke", results_dir=tmp_path)
    path = moco_standin(tmp_path)
    assert all(c.pretrained == str(path) for c in grid.configs)
    assert not {"co_tuning", "lwf"} & {c.method for c in grid.configs}
    bb = build_backbone("efficientnet_lite0", str(path))
    ref = build_backbone("efficientnet_lite0", True)
    assert bb.pretrained.startswith("moco:") and bb.source_head is None
    for (k, a), (_, b) in zip(bb.body.state_dict().items(), ref.body.state_dict().items()):
        assert torch.equal(a, b), k


def test_cpu_and_paper_profiles_follow_the_recipes(tmp_path):
    roots = {"cub200": str(tmp_path)}
    cpu = table_grid("fgvc_supervised", "cpu", data_roots=roots, methods=["concept_tuning", "lwf"],
                     sample_rates=[30], results_dir=tmp_path)
    ct, lwf = cpu.configs
    assert (ct.backbone, ct.image_size, ct.epochs, ct.iters_per_epoch) == ("efficientnet_lite0", 160, 4, 150)
    assert ct.method_args["confusing"] == 199 and ct.recipe["name"] == "ct-cub200-authors@cpu"
    assert lwf.lr == 0.001                       # TLlib's lwf.sh: CUB at 30 %
    paper = table_grid("architectures", "paper", data_roots=roots, results_dir=tmp_path)
    assert {c.backbone for c in paper.configs} == {"resnet18", "resnet34", "resnet101", "resnet152",
                                                   "efficientnet_lite0"}
    assert all(c.pretrained is True for c in paper.configs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(notebook="nosuch"), "unknown notebook"),
    (dict(profile="fast"), "unknown profile"),
    (dict(datasets=["cub"]), "unknown dataset"),
    (dict(methods=["ermm"]), "unknown method"),
    (dict(seeds=["a"]), "seeds must be non-negative integers"),
    (dict(sample_rates=[20]), "unknown sample rate"),
    (dict(datasets=["cub200"]), "ctlib data check cub200"),
    (dict(profile="cpu"), "no data root"),
    (dict(notebook="fgvc_selfsupervised", profile="paper", data_roots={"cub200": "/x", "stanford_cars": "/x",
                                                                      "aircraft": "/x"}), "needs moco_checkpoint"),
    (dict(notebook="fgvc_selfsupervised", moco_checkpoint="/no/such.pth"), "is not a file"),
    (dict(notebook="sensitivity", settings={"KK": [1]}), "unknown Concept-Tuning setting"),
    (dict(notebook="architectures", backbones=["vgg"]), "unknown backbone"),
    (dict(methods=[]), "an empty list"),
    (dict(notebook="ablation", methods=["erm"]), "takes no methods"),
])
def test_bad_input_is_named(kwargs, message, tmp_path):
    kwargs = {"notebook": "fgvc_supervised", "profile": "smoke", **kwargs}
    with pytest.raises(GridError, match=message):
        table_grid(kwargs.pop("notebook"), kwargs.pop("profile"), results_dir=tmp_path, **kwargs)


def test_tables_estimate_negative_transfer_and_cost_on_tiny_runs(tmp_path):
    torch.set_num_threads(2)
    grid = table_grid("negative_transfer", "smoke", methods=["scratch", "erm"], seeds=[0, 1], results_dir=tmp_path,
                      **TINY)
    est = estimate(grid.unique_configs(), steps=1, progress=False)
    assert len(est) == 4 and (est["estimate_s"] > 0).all() and set(est["method"]) == {"scratch", "erm"}
    records = fit_grid(grid, progress=False)
    assert len(records) == 4 and all(is_finished(c) for c in grid.configs)
    assert "all 4 runs are finished" in describe_estimate(grid, progress=False)

    frame = grid_frame(grid)
    assert list(frame["method"]) == ["scratch", "erm", "scratch", "erm"]
    assert (frame["honest"] == [r["final"]["main_last"]["top1"] for r in records]).all()
    assert (frame["step_s"] > 0).all() and frame["peak_rss_mb"].notna().all()
    summary = summarize(frame, ["dataset", "sample_rate", "method", "backbone"])
    erm = frame[frame["method"] == "erm"]["honest"]
    row = summary[summary["method"] == "erm"].iloc[0]
    assert row["n"] == 2 and row["honest_mean"] == pytest.approx(erm.mean())
    assert row["honest_std"] == pytest.approx(erm.std(ddof=1))
    shown = accuracy_display(summary, ["method"], ["dataset", "sample_rate"])
    assert shown.loc["erm"].iloc[1] == mean_std(erm.mean(), erm.std(ddof=1))

    nt = negative_transfer_frame(grid)
    assert list(nt["method"]) == ["erm", "erm"] and list(nt["seed"]) == [0, 1]
    for seed in (0, 1):
        from ctlib.engine import load_predictions
        s = load_predictions(next(c for c in grid.configs if c.method == "scratch" and c.seed == seed))
        e = load_predictions(next(c for c in grid.configs if c.method == "erm" and c.seed == seed))
        share = 100 * np.mean((s["main"] == s["target"]) & (e["main"] != e["target"]))
        assert nt[nt["seed"] == seed]["scratch_right_method_wrong_pct"].item() == pytest.approx(share)
    with pytest.raises(ValueError, match="keep 'scratch'"):
        negative_transfer_frame(table_grid("negative_transfer", "smoke", methods=["erm"], results_dir=tmp_path, **TINY))

    costs = cost_frame(frame)
    assert (costs[costs["method"] == "erm"]["step_s_x_erm"] == 1.0).all()
    assert costs["step_s_x_erm"].notna().all()


def test_unfinished_runs_are_an_error_naming_how_to_train_them(tmp_path):
    grid = table_grid("cost", "smoke", methods=["erm"], results_dir=tmp_path, **TINY)
    with pytest.raises(FileNotFoundError, match="ctlib reproduce"):
        grid_frame(grid)


def test_published_numbers_are_joined_with_their_difference():
    summary = pd.DataFrame({"dataset": ["cub200", "cub200"], "sample_rate": [100, 15], "method": ["concept_tuning",
                            "erm"], "backbone": ["resnet50", "resnet50"], "n": [1, 1], "reference_mean": [84.0, 50.0],
                            "reference_std": [np.nan] * 2, "honest_mean": [83.0, 49.0], "honest_std": [np.nan] * 2})
    out = add_references(summary, "fgvc_supervised")
    assert list(out["published"]) == [85.14, 51.2]          # the authors' README; TLlib's README
    assert list(out["diff"].round(2)) == [-1.14, -1.2]
    assert out["source"].iloc[0].startswith("authors' README")
