"""Every setting of every method and of RunConfig is range-checked when it is built, with a message
naming the setting and its valid range. The tables below must cover every field: a new setting
without an entry (and so, presumably, without a check) fails ``test_tables_cover_every_field``."""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest

from ctlib.data import available
from ctlib.engine import RunConfig
from ctlib.methods import METHODS
from ctlib.models.backbones import BACKBONES
from ctlib.validation import check_settings, choice, flag, integer, real

NONNEG, POS = "a finite number >= 0", "a finite number > 0"
SMOOTHING = ("smoothing", [(1.0, "in [0, 1)"), (-0.1, "in [0, 1)"), ("0.1", "in [0, 1)")])

# (method, field) -> [(bad value, the valid range the message states), ...]
BAD: dict[str, dict[str, list]] = {
    "erm": dict([SMOOTHING]),
    "linear_probe": dict([SMOOTHING]),
    "scratch": dict([SMOOTHING, ("init_seed", [(-1, "None or an integer >= 0"), (1.5, "None or an integer >= 0")])]),
    "l2_sp": {"trade_off_backbone": [(-0.01, NONNEG), (math.inf, NONNEG)],
              "trade_off_head": [(-1.0, NONNEG), (math.nan, NONNEG)]},
    "delta": {"trade_off_backbone": [(-0.01, NONNEG)],
              "trade_off_head": [(-0.01, NONNEG), (None, NONNEG)],
              "regularization": [("l2", "one of ['attention_feature_map', 'feature_map']")],
              "attention_epochs": [(-1, "an integer >= 0"), (2.5, "an integer >= 0")],
              "attention_batch_size": [(0, "an integer >= 1")],
              "attention_lr_decay_epochs": [(0, "an integer >= 1")],
              "attention_iteration_limit": [(0, "an integer >= 1, or -1 (every batch)"),
                                            (-2, "an integer >= 1, or -1 (every batch)")],
              "attention_freeze_backbone": [(1, "True or False"), ("yes", "True or False")],
              "attention_init": [("imagenet", "one of ['supervised', 'run']")]},
    "bss": {"k": [(0, "an integer >= 1"), (1.5, "an integer >= 1"), (True, "an integer >= 1")],
            "trade_off": [(-0.001, NONNEG)]},
    "co_tuning": {"trade_off": [(-2.3, NONNEG)], "source_lr_mult": [(-0.1, NONNEG)], **dict([SMOOTHING])},
    "stochnorm": {"p": [(1.5, "in [0, 1]"), (-0.1, "in [0, 1]")]},
    "lwf": {"trade_off": [(-4.0, NONNEG)], "T": [(0.0, POS), (-3.0, POS)],
            "train_source_head": [(0, "True or False"), ("False", "True or False")],
            "teacher": [("online", "one of ['recorded', 'recorded_eval']")]},
    "bi_tuning": {"K": [(0, "an integer >= 1"), (2.5, "an integer >= 1")],
                  "m": [(1.0, "in [0, 1)"), (-0.5, "in [0, 1)")],
                  "T": [(0.0, POS)], "trade_off": [(-1.0, NONNEG)],
                  "projection_dim": [(0, "an integer >= 1"), (128.0, "an integer >= 1")],
                  "projector_lr_mult": [(-0.1, NONNEG)]},
    "concept_tuning": {
        "K": [(0, "an integer >= 1"), (2.5, "an integer >= 1")],
        "m": [(1.0, "in [0, 1)")], "T": [(0.0, POS), (math.inf, POS)],
        "trade_off": [(-1.0, NONNEG)], "beta": [(-1.0, NONNEG)],
        "start_epoch": [(-2, "an integer >= -1"), (0.5, "an integer >= -1")],
        "confusing": [(2, "an integer >= 3"), (10.0, "an integer >= 3")],
        "ib_dim": [(0, "an integer >= 1")], "infow": [(-5e-3, NONNEG)], **dict([SMOOTHING]),
        "aggregation": [("mean", "one of ['sum', 'concat']")],
        "kl_form": [("paper", "one of ['code', 'textbook']")],
        "eval_sample_ib": [(1, "True or False")], "fused_channel_attention": [("True", "True or False")],
        "pooled_position_attention": [(0, "True or False")],
        "anchor": [("centre", "one of ['corner', 'center']")],
        "num_patches": [(0, "an integer >= 1")],
        "slice_width": [(0, "None or an integer >= 1")], "slice_stride": [(-250, "None or an integer >= 1")],
        "box_size": [(0, "None or an integer >= 1"), (64.5, "None or an integer >= 1")],
        "patch_forward": [("loop", "one of ['grouped', 'batched', 'per_slot']")],
        "concept_features": [("roi", "one of ['crops', 'feature_map']")],
        "bn_momentum": [(1.5, "None or in [0, 1]"), (-0.1, "None or in [0, 1]")],
        "sinkhorn_eps": [(0.0, POS)], "sinkhorn_iters": [(0, "an integer >= 1")],
        "sinkhorn_tol": [(-1e-3, NONNEG)],
        "pos_top": [(0, "an integer in [1, num_patches² = 81]"), (82, "an integer in [1, num_patches² = 81]")],
        "neg_top": [(100, "an integer in [1, num_patches² = 81]"), (2.0, "an integer in [1, num_patches² = 81]")],
        "concept_loss": [(0, "True or False")], "image_loss": [(None, "True or False")],
        "frontdoor": [("no", "True or False")], "bottleneck": [(1.0, "True or False")],
        "attention": [("spatial", "one of ['both', 'channel', 'position']")]},
}

RUN_BAD: dict[str, list] = {
    "method": [("bogus", f"one of {sorted(METHODS)}")],
    "method_args": [("K=0", "a dict of the method's settings")],
    "dataset": [("imagenet", f"one of {available()}")],
    "data_root": [(3, "None or a folder path")],
    "sample_rate": [(20, "one of [15, 30, 50, 100]"), (100.0, "one of [15, 30, 50, 100]")],
    "val_fraction": [(1.0, "in [0, 1)"), (-0.1, "in [0, 1)")],
    "backbone": [("vgg16", f"one of {list(BACKBONES)}")],
    "pretrained": [(None, "True (ImageNet weights), False (random) or a weight file's path"), (1, "True (ImageNet")],
    "image_size": [(8, "an integer >= 16"), (224.0, "an integer >= 16")],
    "batch_size": [(0, "an integer >= 1"), (4.5, "an integer >= 1")],
    "epochs": [(0, "an integer >= 1")],
    "iters_per_epoch": [(0, "an integer >= 1")],
    "lr": [(0.0, POS), (-0.01, POS), (math.nan, POS), (math.inf, POS), ("0.01", POS)],
    "schedule": [("linear", "one of ['multistep', 'cosine']")],
    "milestones": [((24, 12), "a strictly increasing sequence of epoch numbers >= 1"),
                   ((0, 12), "a strictly increasing sequence of epoch numbers >= 1"),
                   ((12, 12), "a strictly increasing sequence of epoch numbers >= 1"),
                   ((12.5,), "a strictly increasing sequence of epoch numbers >= 1"),
                   (12, "a strictly increasing sequence of epoch numbers >= 1")],
    "lr_gamma": [(0.0, "in (0, 1]"), (1.5, "in (0, 1]")],
    "backbone_lr_mult": [(-0.1, NONNEG)],
    "momentum": [(1.0, "in (0, 1)"), (0.0, "in (0, 1)")],
    "weight_decay": [(-5e-4, NONNEG)],
    "hflip": [(1, "True or False")],
    "color_jitter": [("False", "True or False")],
    "seed": [(-1, "an integer >= 0"), (0.5, "an integer >= 0")],
    "skip_bad_images": [(None, "True or False")],
    "recipe": [("paper", "a dict (name, source, note)")],
    "download": [(0, "True or False")],
    "device": [("gpu0", "a torch device"), (0, "a torch device")],
    "num_workers": [(-1, "an integer >= 0")],
    "eval_batch_size": [(0, "an integer >= 1")],
    "results_dir": [("", "a folder path"), (None, "a folder path")],
    "progress": [("yes", "True or False")],
    "keep_checkpoint": [("all", "one of ['full', 'model', 'none']")],
    "channels_last": [("yes", "one of ['auto', True, False]"), (1, "one of ['auto', True, False]")],
    "amp": [("fp32", "one of ['auto', 'off', 'bf16', 'fp16']")],
    "lock_timeout": [(-1, NONNEG), (math.nan, NONNEG), ("5", NONNEG)],
}


def test_tables_cover_every_field():
    assert set(BAD) == set(METHODS)
    for name, cls in METHODS.items():
        missing = {f.name for f in fields(cls.Settings)} - set(BAD[name])
        assert not missing, f"{name}: settings without a range test: {sorted(missing)}"
        assert set(BAD[name]) <= {f.name for f in fields(cls.Settings)}, name
    assert set(RUN_BAD) == {f.name for f in fields(RunConfig)}


def _expect_refused(build, field: str, value, rule: str):
    with pytest.raises(ValueError) as err:
        build({field: value})
    msg = str(err.value)
    assert f"{field}={value!r} (must be {rule}" in msg, msg


@pytest.mark.parametrize("method, field, value, rule",
                         [(m, f, v, r) for m, table in BAD.items() for f, bad in table.items() for v, r in bad])
def test_method_setting_out_of_range_is_refused_with_its_range(method, field, value, rule):
    _expect_refused(METHODS[method].make_settings, field, value, rule)


@pytest.mark.parametrize("field, value, rule", [(f, v, r) for f, bad in RUN_BAD.items() for v, r in bad])
def test_run_setting_out_of_range_is_refused_with_its_range(field, value, rule):
    _expect_refused(lambda d: RunConfig(**d), field, value, rule)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_defaults_are_accepted(method):
    METHODS[method].make_settings({})
    RunConfig(method=method)


# values at the edges of the ranges (and of the other types allowed) are accepted
GOOD = {"erm": {"smoothing": 0.99}, "scratch": {"init_seed": 0, "smoothing": 0},
        "l2_sp": {"trade_off_backbone": 0, "trade_off_head": 0.0},
        "delta": {"attention_iteration_limit": -1, "attention_epochs": 0, "regularization": "feature_map",
                  "attention_freeze_backbone": True, "attention_init": "run"},
        "bss": {"k": 3}, "stochnorm": {"p": 0.0}, "co_tuning": {"smoothing": 0.1, "source_lr_mult": 0},
        "lwf": {"T": 1, "teacher": "recorded_eval", "train_source_head": True},
        "bi_tuning": {"m": 0, "T": 1, "K": 1},
        "concept_tuning": {"m": 0.0, "start_epoch": -1, "confusing": 3, "slice_width": 1, "slice_stride": 1,
                           "box_size": 1, "bn_momentum": None, "pos_top": 4, "neg_top": 4, "num_patches": 2,
                           "sinkhorn_tol": 0, "patch_forward": "per_slot", "aggregation": "concat",
                           "kl_form": "textbook", "anchor": "center", "attention": "channel", "frontdoor": False}}


@pytest.mark.parametrize("method", sorted(GOOD))
def test_edge_values_are_accepted(method):
    s = METHODS[method].make_settings(GOOD[method])
    for k, v in GOOD[method].items():
        assert getattr(s, k) == v


def test_run_edge_values_are_accepted():
    c = RunConfig(method="erm", val_fraction=0.0, lr_gamma=1.0, momentum=0.5, backbone_lr_mult=0, weight_decay=0,
                  milestones=[3, 7], image_size=16, seed=0, num_workers=0, sample_rate=15, pretrained="w.pth",
                  data_root=Path("data"), device="cuda:1", results_dir=Path("out"), schedule="cosine")
    assert c.milestones == (3, 7)
    assert RunConfig(milestones=()).milestones == ()


def test_every_bad_setting_is_listed_in_one_error():
    with pytest.raises(ValueError) as err:
        METHODS["concept_tuning"].make_settings({"K": 0, "m": 1.0, "attention": "x"})
    msg = str(err.value)
    assert msg.startswith("invalid Concept-Tuning setting(s): ")
    assert all(s in msg for s in ("K=0 (must be", "m=1.0 (must be", "attention='x' (must be"))
    with pytest.raises(ValueError, match=r"lr=0 \(must be a finite number > 0\); .*seed=-1 \(must be an integer >= 0"):
        RunConfig(lr=0, seed=-1)


def test_run_config_checks_the_methods_settings():
    with pytest.raises(ValueError, match=r"invalid Concept-Tuning setting\(s\): K=0 \(must be an integer >= 1\)"):
        RunConfig(method="concept_tuning", method_args={"K": 0})
    with pytest.raises(ValueError, match=r"unknown setting.*'K'.*method 'erm'"):
        RunConfig(method="erm", method_args={"K": 40})
    with pytest.raises(ValueError, match=r"invalid bss setting\(s\): k=2.5"):
        RunConfig.from_dict({"method": "bss", "method_args": {"k": 2.5}})


def test_helper_builds_the_rules():
    assert integer("n", 2, 1, 3)[2:] == (True, "an integer in [1, 3]")
    assert integer("n", None, 1, none=True)[2:] == (True, "None or an integer >= 1")
    assert real("x", 1, 0, 1, lo_open=True)[2:] == (True, "in (0, 1]")
    assert real("x", 0, 0, lo_open=True)[2:] == (False, "a finite number > 0")
    assert flag("b", False)[2] and not flag("b", 0)[2]
    assert choice("c", "a", ("a", "b"))[2] and not choice("c", ["a"], ("a", "b"))[2]
    check_settings("x", [("a", 1, True, "anything")])
    with pytest.raises(ValueError, match=r"^invalid x setting\(s\): a=1 \(must be odd\)$"):
        check_settings("x", [("a", 1, False, "odd"), ("b", 2, True, "even")])
