"""``ctlib reproduce --executor local|submitit|ray``: the same two tiny runs trained by the local worker
processes, by submitit's local cluster and by a local Ray instance end with the same records and predictions;
a run interrupted after its first epoch resumes when a Ray task trains it, and a submitit job preempted
mid-run is requeued and resumes; bad executor input exits 2 before any work; an unreachable Ray cluster or a
failed Slurm submission names the runs and writes no record.

Needs the scale-out extras (requirements-scaleout.lock; scripts/test.sh installs them). Cost: about
2.5 min on 2 cores (seven tiny runs of ~15 s, one of them resumed, one preempted; Ray's start ~12 s).
"""
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from ctlib.cli import EXIT_PROBLEMS, EXIT_USAGE, main
from ctlib.engine import fit
from ctlib.engine.run import run_dir
from ctlib.grid_fit import is_finished
from ctlib.grids import table_grid
from ctlib.records import RECORD_NAME
from ctlib.reproduce_all import Plan, ReproduceError, plan, run_weight, train

REPO = Path(__file__).resolve().parents[1]
#: what may differ between two trainings of the same run: when, where, how long, which folder
NOT_COMPARED = ("finished_at", "wall_time_s", "timing", "peak_memory")


@pytest.fixture(autouse=True)
def _jobs_import_this_checkout(monkeypatch):
    """Job processes (submitit's local cluster, Ray workers) must import this checkout's ctlib, as the
    spawned local workers do, not another installed copy."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _runs(out: Path, epochs: int = 2):
    """Two tiny smoke runs (ERM and linear probing on the demo set, seed 0): 2 epochs of 3 steps."""
    grid = table_grid("fgvc_supervised", "smoke", methods=["erm", "linear_probe"], results_dir=out,
                      epochs=epochs, iters_per_epoch=3, milestones=())
    return grid.unique_configs()


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n

    def set_postfix_str(self, text, refresh=True):
        pass


def _in_fresh_process(target, *args, **kwargs) -> None:
    """Call ``target`` in a spawned process, as every executor trains: in this long-lived test process the same
    run's float sums can differ in the last digits (CPU kernels depend on memory layout), in fresh ones not."""
    import multiprocessing as mp

    process = mp.get_context("spawn").Process(target=target, args=args, kwargs=kwargs)
    process.start()
    process.join()
    assert process.exitcode == 0


def _train(out: Path, executor: str = "local", runs=None, **options) -> tuple[dict, list, _Bar]:
    runs, bar = runs or _runs(out), _Bar()
    failed = train(Plan("smoke", out, [], [], runs, workers=[None], threads=1, executor=executor,
                        executor_options=options), bar)
    return failed, runs, bar


def _comparable(config) -> tuple[dict, dict]:
    folder = run_dir(config)
    record = json.loads((folder / RECORD_NAME).read_text())
    for key in NOT_COMPARED:
        record.pop(key)
    record["config"].pop("results_dir")
    with np.load(folder / "test_predictions.npz") as npz:
        predictions = {k: npz[k] for k in npz.files}
    return record, predictions


def _assert_same_runs(runs, other_runs):
    for a, b in zip(runs, other_runs):
        (rec_a, pred_a), (rec_b, pred_b) = _comparable(a), _comparable(b)
        assert rec_a == rec_b                  # accuracies, training losses per epoch, data, config, versions
        assert pred_a.keys() == pred_b.keys()
        for k in pred_a:
            np.testing.assert_array_equal(pred_a[k], pred_b[k], err_msg=f"{a.run_id()}: predictions {k}")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The two tiny runs trained by the local executor: the reference."""
    out = tmp_path_factory.mktemp("local")
    failed, runs, bar = _train(out)
    assert failed == {} and all(is_finished(c) for c in runs) and bar.n == sum(run_weight(c) for c in runs)
    assert len(json.loads((run_dir(runs[0]) / RECORD_NAME).read_text())["history"]) == 2
    return runs


def test_submitit_trains_the_same_records_as_the_local_executor(local, tmp_path):
    failed, by_submitit, bar = _train(tmp_path, "submitit", cluster="local", slurm={})
    assert failed == {}, failed
    assert bar.n == sum(run_weight(c) for c in by_submitit)          # one bar, advanced as each job ends
    assert (tmp_path / "submitit").is_dir()                          # submitit's job files and logs
    _assert_same_runs(local, by_submitit)
    assert _train(tmp_path, "submitit", cluster="local", slurm={})[2].n == 0   # nothing left: nothing submitted


def test_ray_trains_the_same_records_and_resumes_an_interrupted_run(local, tmp_path):
    import ray

    interrupted = _runs(tmp_path)[0]                                  # ERM stopped after its first epoch
    _in_fresh_process(fit, asdict(interrupted.replace(progress=False)), stop_after_epoch=1)
    assert (run_dir(interrupted) / "checkpoint.pt").exists() and not is_finished(interrupted)
    failed, by_ray, bar = _train(tmp_path, "ray", address=None)      # starts, then stops, a local instance
    assert failed == {}, failed
    assert bar.n == sum(run_weight(c) for c in by_ray)
    _assert_same_runs(local, by_ray)                                  # the resumed run included
    assert not ray.is_initialized()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's process through /proc")
def test_a_preempted_submitit_job_is_requeued_and_its_run_resumes(local, tmp_path):
    import submitit

    from ctlib.executors import SubmititJob

    preempted = local[0].replace(results_dir=str(tmp_path / "runs"))
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(SubmititJob(), asdict(preempted), None, 1)
    checkpoint = run_dir(preempted) / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and not job.done() and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists() and not job.done()                      # epoch 1 saved, epoch 2 (and its test) running
    controller = job._process.pid                                      # submitit's local controller runs the task
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)                                 # what Slurm sends before preempting a job
    assert job.result()["error"] is None
    log = job.stdout()
    assert "Calling checkpoint method" in log and "Requeued job" in log and log.count("Starting with") == 2
    _assert_same_runs(local[:1], [preempted])


@pytest.mark.parametrize("args, says", [
    (["--executor", "dask"], "unknown executor: 'dask'; choose from local, submitit, ray"),
    (["--executor", "ray", "--slurm-partition", "gpu"], "--slurm-partition: not an option of --executor ray"),
    (["--slurm-time", "60"], "--slurm-time: not an option of --executor local"),
    (["--executor", "submitit", "--ray-address", "auto"], "--ray-address: not an option of --executor submitit"),
    (["--executor", "submitit", "--submitit-cluster", "pbs"], "choose from slurm, local, debug"),
    (["--executor", "submitit", "--slurm-option", "qos"], "--slurm-option takes KEY=VALUE"),
    (["--executor", "submitit", "--slurm-time", "0"], "--slurm-time: time must be minutes"),
    (["--executor", "submitit", "--slurm-config", "/nonexistent/slurm.toml"], "--slurm-config /nonexistent/slurm.toml"),
    (["--executor", "ray", "--jobs", "2"], "--jobs and --gpus choose the local executor's worker processes"),
])
def test_bad_executor_input_exits_2_before_anything_is_done(tmp_path, capsys, args, says):
    out = tmp_path / "results"
    assert main(["reproduce", "--only", "fgvc_supervised", "--methods", "erm", *args, "--out", str(out)]) == EXIT_USAGE
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_executor_package_names_the_extra_to_install():
    from ctlib.executors import install_hint

    assert install_hint("submitit") is None and install_hint("ray") is None and install_hint("local") is None
    assert install_hint("submitit", module="submitit_not_installed_here") == (
        "--executor submitit needs the Python package 'submitit_not_installed_here', which is not installed: from "
        "the repository root, pip install -e '.[slurm]' (or the pinned set: pip install -r requirements-scaleout.lock)")
    assert "pip install -e '.[ray]'" in install_hint("ray", module="ray_not_installed_here")


def test_slurm_settings_from_a_config_file_and_the_command_line(tmp_path):
    from ctlib.executors import submitit_parameters

    config = tmp_path / "slurm.toml"
    config.write_text('partition = "gpu"\ntime = 90\ngpus = 2\n[options]\nqos = "high"\nconstraint = "a100"\n'
                      'mem_gb = 32\nreservation = "iccv"\n')
    chosen = plan(only=["fgvc_supervised"], methods=["erm"], device="cuda", out=tmp_path / "r", executor="submitit",
                  slurm={"config": config, "time_min": 30, "options": ["qos=low"]})
    assert chosen.runs[0].device == "cuda"                    # not checked here: the jobs' nodes have the GPUs
    assert chosen.executor_options == {"cluster": "slurm", "slurm": {
        "partition": "gpu", "time": 30, "gpus": 2, "options": {"qos": "low", "constraint": "a100", "mem_gb": 32,
                                                                "reservation": "iccv"}}}
    params = submitit_parameters(chosen.executor_options["slurm"], threads=4, cuda=True)
    assert params == {"name": "ctlib", "timeout_min": 30, "gpus_per_node": 2, "cpus_per_task": 4, "tasks_per_node": 1,
                      "nodes": 1, "slurm_partition": "gpu", "slurm_qos": "low", "slurm_constraint": "a100",
                      "mem_gb": 32, "slurm_additional_parameters": {"reservation": "iccv"}}
    import submitit
    submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local").update_parameters(**params)   # names it knows
    assert submitit_parameters({}, threads=2, cuda=False)["gpus_per_node"] == 0
    with pytest.raises(ReproduceError, match="unknown key"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"partitions": "gpu"}')
        plan(only=["fgvc_supervised"], methods=["erm"], out=tmp_path / "r", executor="submitit",
             slurm={"config": bad})


@pytest.mark.parametrize("args, why", [
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "could not connect to the Ray cluster at 127.0.0.1:1"),
    (["--executor", "submitit", "--submitit-cluster", "slurm"], "not submitted to submitit's slurm cluster"),
])
def test_an_unreachable_cluster_names_the_runs_and_writes_no_record(tmp_path, capsys, args, why):
    out = tmp_path / "results"
    t0 = time.time()
    assert main(["reproduce", "--only", "fgvc_supervised", "--methods", "erm,linear_probe", *args,
                 "--out", str(out)]) == EXIT_PROBLEMS
    assert time.time() - t0 < 60
    text = capsys.readouterr().out
    runs = table_grid("fgvc_supervised", "smoke", methods=["erm", "linear_probe"], results_dir=out).unique_configs()
    assert "2 run(s) failed" in text and "0 run(s) trained" in text
    for c in runs:
        assert f"{c.run_id()}: " in text and why in text
        assert not is_finished(c) and not run_dir(c).exists()
    assert "fgvc_supervised        FAILED" in text
