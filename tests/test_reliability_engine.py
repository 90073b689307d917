"""Engine reliability: divergence, damaged files, safe checkpoint loading, file modes, run locks.

Every case keeps what is already on disk: a diverged run keeps its last good checkpoint, a damaged file is
reported (never replaced or deleted), a locked run is left to its holder.
"""
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import ctlib.atomic as atomic
import ctlib.engine as engine
import ctlib.engine.run as run_mod
from ctlib.engine import RunConfig, fit, load_model, run_dir
from ctlib.methods.erm import ERM
from ctlib.records import find_records, history_frame, read_record, records_frame, write_json_atomic
from ctlib.seeding import set_rng_state

REPO = Path(__file__).resolve().parents[1]
SMALL_DEMO = None


@pytest.fixture(autouse=True, scope="module")
def _small_demo(tmp_path_factory):
    """The demo data cut to 20 training and 10 test images a class: evaluation dominates these tiny runs."""
    global SMALL_DEMO
    src = np.load(REPO / "data" / "fashion_mnist_small.npz")
    keep = {}
    for split, n in (("train", 20), ("test", 10)):
        labels = src[f"{split}_labels"]
        idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)])
        keep.update({f"{split}_images": src[f"{split}_images"][idx], f"{split}_labels": labels[idx],
                     f"{split}_source_index": src[f"{split}_source_index"][idx]})
    SMALL_DEMO = tmp_path_factory.mktemp("demo") / "fashion_mnist_small.npz"
    np.savez(SMALL_DEMO, classes=src["classes"], **keep)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """These runs are tiny: one thread is fastest (conftest's two threads contend on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


posix_only = pytest.mark.skipif(os.name != "posix", reason="umask, PID liveness and `sleep` are POSIX")


def _config(tmp_path, **kw):
    base = dict(method="erm", dataset="demo", data_root=str(SMALL_DEMO), sample_rate=50, backbone="resnet18",
                pretrained=False, image_size=32,
                batch_size=4, epochs=1, iters_per_epoch=2, results_dir=str(tmp_path), progress=False,
                keep_checkpoint="full")
    return RunConfig(**{**base, **kw})


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _no_training(*a, **k):
    pytest.fail("this process trained a run it should have left alone or returned as finished")


# 1. divergence --------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_with_a_diverged_error(tmp_path):
    cfg = _config(tmp_path, lr=1e30)               # a real divergence: the loss of step 2 is NaN
    with pytest.raises(engine.DivergedError) as err:
        fit(cfg)
    msg = str(err.value)
    assert "epoch 1" in msg and "step 2/2" in msg and cfg.run_id() in msg
    assert "total=nan" in msg and "cls=nan" in msg                      # the loss parts, named
    out = run_dir(cfg)
    assert not (out / "record.json").exists() and not (out / "checkpoint.pt").exists()
    assert not (out / "lock").exists()


class _NaNGradient(torch.autograd.Function):
    """The identity, with a NaN gradient: a finite loss whose update makes the weights NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_weights_after_the_last_step_are_caught(tmp_path, monkeypatch):
    step = ERM.training_step

    def nan_update(self, views, labels, epoch):
        out = step(self, views, labels, epoch)
        out["loss"] = _NaNGradient.apply(out["loss"])
        return out

    monkeypatch.setattr(ERM, "training_step", nan_update)
    cfg = _config(tmp_path, iters_per_epoch=1)     # no later loss sees the NaN weights
    with pytest.raises(engine.DivergedError, match=r"epoch 1, step 1/1.*parameters are not finite"):
        fit(cfg)
    assert not (run_dir(cfg) / "record.json").exists()


def test_divergence_keeps_the_previous_epoch_checkpoint(tmp_path, monkeypatch):
    cfg = _config(tmp_path, epochs=2, iters_per_epoch=3)
    assert fit(cfg, stop_after_epoch=1) is None
    ckpt = run_dir(cfg) / "checkpoint.pt"
    before = _digest(ckpt)
    step = ERM.training_step

    def diverging(self, views, labels, epoch):
        out = step(self, views, labels, epoch)
        if epoch == 1:       # a real divergence in the second epoch: loss and a part become infinite
            out["loss"] = out["loss"] * float("inf")
            out["cls"] = float("inf")
        return out

    monkeypatch.setattr(ERM, "training_step", diverging)
    with pytest.raises(engine.DivergedError, match=r"epoch 2.*step 1/3") as err:
        fit(cfg)
    assert "cls" in str(err.value) and "inf" in str(err.value) and str(ckpt) in str(err.value)
    assert _digest(ckpt) == before                                      # the last good checkpoint is intact
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert not (run_dir(cfg) / "record.json").exists()


def test_records_are_strict_json(tmp_path):
    path = tmp_path / "r" / "record.json"
    with pytest.raises(ValueError) as err:
        write_json_atomic(path, {"history": [{"train": {"cls": 1.0}}, {"train": {"cls": float("nan")}}]})
    assert str(path) in str(err.value) and "history[1].train.cls" in str(err.value)
    assert not path.exists() and not (path.parent.exists() and list(path.parent.iterdir()))   # nothing written
    path.parent.mkdir()
    path.write_text('{"run_id": "x", "config": {}, "config_hash": "0", "final": {}, '
                    '"history": [{"train": {"cls": NaN}}]}')                # written by an older ctlib
    with pytest.raises(ValueError, match=r"nan at history\[0\]\.train\.cls") as err:
        read_record(path)
    assert str(path) in str(err.value)


# 2. damaged files -----------------------------------------------------------------------------------------

def test_truncated_checkpoint_is_a_clear_error_and_is_kept(tmp_path):
    cfg = _config(tmp_path, epochs=2)
    fit(cfg, stop_after_epoch=1)
    ckpt = run_dir(cfg) / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError) as err:
        fit(cfg)
    msg = str(err.value)
    assert str(ckpt) in msg and "damaged" in msg and "delete" in msg.lower() and "from scratch" in msg
    assert "weights_only=False" not in msg
    assert ckpt.read_bytes() == data[: len(data) // 2]                  # left as it was
    assert not (run_dir(cfg) / "lock").exists()


def test_damaged_records_are_named_and_skipped_in_tables(tmp_path):
    good, bad = _config(tmp_path, seed=0), _config(tmp_path, seed=1)
    fit(good)
    fit(bad)
    rec = run_dir(bad) / "record.json"
    text = rec.read_text()
    rec.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError) as err:
        fit(bad)                                                         # a finished run with a damaged record
    assert str(rec) in str(err.value) and "delete" in str(err.value).lower()
    assert rec.read_text() == text[: len(text) // 2]
    for fn in (records_frame, history_frame):
        with pytest.warns(UserWarning, match=str(rec).replace("\\", "\\\\")):
            frame = fn(tmp_path)
        assert set(frame["run_id"]) == {good.run_id()}
        with pytest.raises(ValueError, match="record.json"):
            fn(tmp_path, strict=True)
    with pytest.warns(UserWarning):
        assert [r["run_id"] for r in find_records(tmp_path, [bad.run_id(), good.run_id()])] == [good.run_id()]
    (run_dir(good) / "record.json").write_text("[1, 2]")                # valid JSON, not a record
    with pytest.raises(ValueError, match="not a run record"):
        read_record(run_dir(good) / "record.json")


# 3. checkpoints load with weights_only=True ---------------------------------------------------------------

def test_checkpoints_load_with_weights_only_and_old_ones_still_resume(tmp_path):
    full = fit(_config(tmp_path / "a", epochs=2))
    cfg = _config(tmp_path / "b", epochs=2, keep_checkpoint="model")
    fit(cfg, stop_after_epoch=1)
    ckpt = run_dir(cfg) / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)                         # plain safe loading, no allow-list
    # a checkpoint written before this change holds numpy's RNG state as an array: it still resumes
    saved = np.random.get_state()
    set_rng_state(state["rng"])
    state["rng"]["numpy"] = np.random.get_state()
    np.random.set_state(saved)
    torch.save(state, ckpt)
    resumed = fit(cfg)
    assert resumed["history"][1]["test"] == full["history"][1]["test"]
    torch.load(run_dir(cfg) / "model.pt", weights_only=True)
    assert load_model(cfg) is not None


class NotAWeight:
    pass


@pytest.mark.parametrize("content", ["text", "object"])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    cfg = _config(tmp_path, epochs=2)
    out = run_dir(cfg)
    out.mkdir(parents=True)
    ckpt = out / "checkpoint.pt"
    if content == "text":
        ckpt.write_text("not a checkpoint")
    else:
        torch.save({"config_hash": cfg.hash(), "thing": NotAWeight()}, ckpt)
    with pytest.raises(RuntimeError) as err:
        fit(cfg)
    msg = str(err.value)
    assert str(ckpt) in msg and "not a" in msg and "weights_only=False" not in msg
    (out / "model.pt").write_text("nothing")
    with pytest.raises(RuntimeError) as err:
        load_model(cfg)
    assert str(out / "model.pt") in str(err.value) and "weights_only=False" not in str(err.value)


def test_damaged_prepare_cache_is_named(tmp_path):
    from ctlib.engine.run import load_run_file
    path = tmp_path / "prepare.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError) as err:
        load_run_file(path, "pre-pass cache", "delete it: the pre-pass is computed again")
    assert str(path) in str(err.value) and "computed again" in str(err.value)


# 4. file modes and progress bars --------------------------------------------------------------------------

@posix_only
def test_files_follow_the_umask(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(atomic, "_UMASK", None, raising=False)                   # recomputed under this umask
        cfg = _config(tmp_path, keep_checkpoint="model")
        fit(cfg)
        for name in ("record.json", "model.pt"):
            assert os.stat(run_dir(cfg) / name).st_mode & 0o777 == 0o644, name
        atomic.write_text_atomic(tmp_path / "x.txt", "x")
        assert os.stat(tmp_path / "x.txt").st_mode & 0o777 == 0o644
        os.umask(0o077)
        monkeypatch.setattr(atomic, "_UMASK", None, raising=False)
        atomic.write_text_atomic(tmp_path / "y.txt", "y")
        assert os.stat(tmp_path / "y.txt").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_skip_bad_images_follows_the_progress_flag(tmp_path, capfd):
    from ctlib.data import build_dataset
    build_dataset("demo", SMALL_DEMO, split="train", skip_bad_images=True, progress=False)
    assert "checking images" not in capfd.readouterr().err
    fit(_config(tmp_path, skip_bad_images=True, progress=False))
    assert "checking images" not in capfd.readouterr().err
    build_dataset("demo", SMALL_DEMO, split="train", skip_bad_images=True, progress=True)
    assert "checking images" in capfd.readouterr().err


# 5. run locks ---------------------------------------------------------------------------------------------

def _write_lock(out: Path, pid: int, host: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    holder = {"host": host or socket.gethostname(), "pid": pid, "since": "2024-01-02T03:04:05"}
    (out / "lock").write_text(json.dumps(holder))
    return holder


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@posix_only
def test_a_run_locked_by_a_live_process_is_left_alone(tmp_path, monkeypatch, live_pid):
    cfg = _config(tmp_path)
    _write_lock(run_dir(cfg), live_pid)
    before = (run_dir(cfg) / "lock").read_text()
    monkeypatch.setattr(run_mod, "Run", _no_training)
    with pytest.raises(engine.RunLockedError) as err:
        fit(cfg)                                                         # lock_timeout 0: no wait
    msg = str(err.value)
    assert str(live_pid) in msg and socket.gethostname() in msg and "2024-01-02T03:04:05" in msg
    assert "lock_timeout" in msg and str(run_dir(cfg) / "lock") in msg
    t0 = time.monotonic()
    with pytest.raises(engine.RunLockedError, match="waited 1"):
        fit(cfg.replace(lock_timeout=1.0))
    assert time.monotonic() - t0 >= 1.0
    assert (run_dir(cfg) / "lock").read_text() == before                # not taken over
    # a holder on another host cannot be checked: it counts as live
    _write_lock(run_dir(cfg), 999999999, host="another-host.invalid")
    with pytest.raises(engine.RunLockedError, match="another-host.invalid"):
        fit(cfg)


@posix_only
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    cfg = _config(tmp_path)
    _write_lock(run_dir(cfg), dead.pid)
    with pytest.warns(UserWarning, match=rf"stale.*{dead.pid}"):
        rec = fit(cfg)
    assert rec is not None and (run_dir(cfg) / "record.json").exists()
    assert not (run_dir(cfg) / "lock").exists()                          # released when done


@posix_only
def test_a_waiting_process_returns_the_record_the_holder_wrote(tmp_path, monkeypatch, live_pid):
    cfg = _config(tmp_path / "x")
    finished = fit(cfg.replace(results_dir=str(tmp_path / "elsewhere")))   # same run (results_dir is not identity)
    out = run_dir(cfg)
    _write_lock(out, live_pid)

    def holder_finishes():
        time.sleep(0.8)
        write_json_atomic(out / "record.json", finished)
        (out / "lock").unlink()

    threading.Thread(target=holder_finishes).start()
    monkeypatch.setattr(run_mod, "Run", _no_training)
    assert fit(cfg.replace(lock_timeout=30)) == json.loads(json.dumps(finished))


def test_two_processes_on_one_run_train_it_once(tmp_path, monkeypatch):
    cfg = _config(tmp_path, keep_checkpoint="model")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(asdict(cfg)))
    script = textwrap.dedent(f"""
        import json, time
        import ctlib.engine.run as r
        from ctlib.engine import fit
        epoch = r.Run.train_epoch
        def slow(self, e):
            time.sleep(4)          # hold the lock long enough for the other process to find it
            return epoch(self, e)
        r.Run.train_epoch = slow
        fit(json.loads(open({str(cfg_file)!r}).read()))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(REPO), stderr=subprocess.PIPE, text=True)
    lock = run_dir(cfg) / "lock"
    try:
        deadline = time.monotonic() + 60
        while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), proc.stderr.read() if proc.poll() is not None else "no lock after 60 s"
        monkeypatch.setattr(run_mod, "Run", _no_training)
        with pytest.raises(engine.RunLockedError, match=str(proc.pid)):
            fit(cfg)
        rec = fit(cfg.replace(lock_timeout=120))                         # waits, then returns the holder's record
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rec == read_record(run_dir(cfg) / "record.json")
    assert not lock.exists() and not (run_dir(cfg) / "checkpoint.pt").exists()
    assert (run_dir(cfg) / "model.pt").exists()


def test_lock_is_released_after_an_interruption_and_lock_timeout_is_not_identity(tmp_path):
    cfg = _config(tmp_path, epochs=2)
    assert fit(cfg, stop_after_epoch=1) is None
    assert not (run_dir(cfg) / "lock").exists()
    assert cfg.replace(lock_timeout=5).run_id() == cfg.run_id()
    with pytest.raises(ValueError, match="lock_timeout"):
        cfg.replace(lock_timeout=-1)
    assert math.isfinite(fit(cfg.replace(lock_timeout=5))["final"]["main_last"]["top1"])
