"""Engine: records, protocols, resume equivalence, finished runs, config changes, data stream."""
import json

import pytest
import torch

import ctlib.engine.run as run_mod
from ctlib.engine import ConfigMismatchError, RunConfig, fit, load_model, run_dir
from ctlib.engine.run import final_metrics
from ctlib.engine.sampler import EpochBatches


def _config(tmp_path, method="erm", **kw):
    args = {"confusing": 3, "K": 4, "ib_dim": 16} if method == "concept_tuning" else {}
    base = dict(method=method, method_args=args, dataset="demo", sample_rate=15, backbone="resnet18",
                pretrained=False, image_size=64, batch_size=8, epochs=3, iters_per_epoch=3, milestones=(2,),
                results_dir=str(tmp_path), progress=False, keep_checkpoint="full")
    return RunConfig(**{**base, **kw})


def _strip(record):
    return {k: record[k] for k in ("history", "final", "config_hash", "data")}


@pytest.mark.parametrize("method", ["erm", "concept_tuning"])
def test_killed_run_resumes_to_the_same_record(tmp_path, method):
    full = fit(_config(tmp_path / "a", method))
    cfg = _config(tmp_path / "b", method)
    assert fit(cfg, stop_after_epoch=1) is None                    # "killed" after epoch 1
    assert (run_dir(cfg) / "checkpoint.pt").exists() and not (run_dir(cfg) / "record.json").exists()
    resumed = fit(cfg)
    assert json.dumps(_strip(resumed), sort_keys=True) == json.dumps(_strip(full), sort_keys=True)


def test_record_contents_and_protocols(tmp_path):
    rec = fit(_config(tmp_path, "concept_tuning", val_fraction=0.2, keep_checkpoint="model"))
    on_disk = json.loads((run_dir(_config(tmp_path, "concept_tuning", val_fraction=0.2)) / "record.json").read_text())
    assert on_disk == json.loads(json.dumps(rec, default=str))
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]
    h = rec["history"][0]
    assert set(h["test"]) == {"main", "ib"} and set(h["val"]) == {"main", "ib"}
    assert set(h["test"]["main"]) == {"top1", "mean_class"}
    assert {"cls", "img", "concept", "ib_cls", "ib_kl", "total"} <= set(h["train"])
    # multi-step schedule: backbone at 0.1x, decayed x0.1 after epoch 2
    assert rec["history"][0]["lr"] == pytest.approx([0.001, 0.01])
    assert rec["history"][2]["lr"] == pytest.approx([0.0001, 0.001])
    assert set(rec["final"]) == {"reference", "main_last", "val_selected"}
    best = max(max(e["test"][k]["top1"] for k in e["test"]) for e in rec["history"])
    assert rec["final"]["reference"]["top1"] == best
    assert rec["final"]["main_last"]["top1"] == rec["history"][-1]["test"]["main"]["top1"]
    assert "IB head evaluated with its mean μ" in rec["final"]["reference"]["protocol"]
    assert rec["method_settings"]["patch_forward"] == "grouped" and rec["method_settings"]["K"] == 4
    assert rec["data"]["val_images"] > 0 and rec["data"]["train_images"] + rec["data"]["val_images"] == 300
    assert rec["data"]["train"]["sample_list_checksum"]
    assert rec["versions"]["torch"] == torch.__version__ and rec["peak_memory"]["cpu_max_rss_mb"] > 0
    assert not (run_dir(_config(tmp_path, "concept_tuning", val_fraction=0.2)) / "checkpoint.pt").exists()
    model = load_model(_config(tmp_path, "concept_tuning", val_fraction=0.2))
    assert set(model.heads(torch.randn(2, 3, 64, 64))) == {"main", "ib"}


def test_finished_run_is_not_rerun(tmp_path, monkeypatch):
    cfg = _config(tmp_path, epochs=1, iters_per_epoch=1)
    first = fit(cfg)
    monkeypatch.setattr(run_mod, "Run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert fit(cfg) == json.loads(json.dumps(first, default=str))
    assert fit(cfg.replace(device="cpu", progress=True)) is not None        # non-identity settings: same run


def test_changed_config_on_a_checkpoint_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path, epochs=2, iters_per_epoch=1)
    fit(cfg, stop_after_epoch=1)
    ckpt = run_dir(cfg) / "checkpoint.pt"
    other = cfg.replace(lr=0.05)
    (run_dir(other)).mkdir(parents=True)
    (run_dir(other) / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    with pytest.raises(ConfigMismatchError, match=r"lr.*0\.01.*0\.05"):
        fit(other)


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown run setting.*'lrr'"):
        RunConfig.from_dict({"lrr": 0.1})
    with pytest.raises(ValueError, match="schedule"):
        RunConfig(schedule="linear")
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(_config(tmp_path, batch_size=400))


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    a = list(EpochBatches(20, 6, seed=3, epoch=2, iters_per_epoch=4))
    b = list(EpochBatches(20, 6, seed=3, epoch=2, iters_per_epoch=4))
    assert a == b and len(a) == 4 and all(len(x) == 6 for x in a)
    stream = [i for e in range(3) for batch in EpochBatches(20, 6, 3, e, 4) for i in batch]
    for p in range(len(stream) // 18):          # each pass: 3 batches of distinct images (drop_last)
        assert len(set(stream[p * 18:(p + 1) * 18])) == 18
    assert list(EpochBatches(20, 6, seed=4, epoch=2, iters_per_epoch=4)) != a


def test_final_metrics_reference_protocol_takes_max_over_heads_and_epochs():
    hist = [{"epoch": 1, "test": {"main": {"top1": 50.0, "mean_class": 49.0}, "ib": {"top1": 60.0, "mean_class": 58.0}}},
            {"epoch": 2, "test": {"main": {"top1": 55.0, "mean_class": 54.0}, "ib": {"top1": 52.0, "mean_class": 51.0}}}]
    f = final_metrics(hist)
    assert (f["reference"]["top1"], f["reference"]["epoch"], f["reference"]["head"]) == (60.0, 1, "ib")
    assert (f["main_last"]["top1"], f["main_last"]["epoch"]) == (55.0, 2)
    assert "val_selected" not in f
    assert f["reference"]["protocol"] == "max over heads and epochs of test top-1 (reference code)"
    assert final_metrics(hist, "IB head evaluated with μ")["reference"]["protocol"].endswith("; IB head evaluated with μ")
