"""``ctlib reproduce``: bad input stops before anything is trained; a failed run is reported and its notebook
not executed; one real smoke run end to end, then a second call that finds everything up to date.

Cost: the end-to-end call trains one smoke ERM run (~17 s) and executes fgvc_supervised (~15 s); the
failed-run case starts one worker process and trains nothing.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctlib.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, main
from ctlib.engine.lock import RunLock
from ctlib.engine.run import run_dir
from ctlib.grids import table_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, says", [
    (["--only", "fgvc_supervise"], "did you mean 'fgvc_supervised'"),
    (["--only", "fgvc_supervised,nope"], "choose from fgvc_supervised, fgvc_selfsupervised"),
    (["--profile", "gpu"], "unknown profile: 'gpu'; choose from smoke, cpu, paper"),
    (["--methods", "erm,concept_tunig"], "did you mean 'concept_tuning'"),
    (["--data-root", "cub=/tmp"], "unknown dataset: 'cub'"),
    (["--data-root", "cub200"], "NAME=PATH"),
    (["--seeds", "a"], "non-negative integers"),
    (["--seeds", "0,-1"], "non-negative integers"),
    (["--profile", "cpu"], "ctlib data check cub200"),          # its grids need CUB-200-2011's folder
    (["--gpus", "0", "--device", "cpu"], "--gpus needs a CUDA device"),
    (["--device", "gpu0"], "not a torch device"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_input_exits_2_before_anything_is_done(tmp_path, capsys, args, says):
    out = tmp_path / "results"
    assert main(["reproduce", *args, "--out", str(out)]) == EXIT_USAGE
    assert says in capsys.readouterr().err
    assert not out.exists()                                         # nothing trained, nothing written


def test_a_failed_run_is_reported_and_its_notebook_not_executed(tmp_path, capsys):
    out = tmp_path / "results"
    (config,) = table_grid("fgvc_supervised", "smoke", methods=["erm"], results_dir=out).unique_configs()
    with RunLock(run_dir(config)):                                  # held by this live process: the run cannot train
        status = main(["reproduce", "--only", "fgvc_supervised", "--methods", "erm", "--out", str(out)])
    text = capsys.readouterr()
    assert status == EXIT_PROBLEMS
    assert f"{config.run_id()}: RunLockedError" in text.out
    assert "fgvc_supervised        FAILED" in text.out and "needs 1 run(s) that failed" in text.out
    assert not (out / "fgvc_supervised.ipynb").exists() and not (out / "reproduce.json").exists()


def _reproduce(out: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "ctlib", "reproduce", "--only", "fgvc_supervised", "--methods", "erm",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    return done, time.time() - t0


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_reproduce_trains_executes_indexes_then_finds_everything_up_to_date(tmp_path):
    out = tmp_path / "results"
    first, _ = _reproduce(out)
    assert first.returncode == EXIT_OK, first.stdout + first.stderr
    assert "fgvc_supervised        ok" in first.stdout and "1 run(s) trained" in first.stdout

    (config,) = table_grid("fgvc_supervised", "smoke", methods=["erm"], results_dir=out).unique_configs()
    assert (run_dir(config) / "record.json").exists()
    executed = json.loads((out / "fgvc_supervised.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert f'results_dir = "{out}"' in "".join(injected[0]["source"])
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    table = (out / "fgvc_supervised.csv").read_text().splitlines()
    assert len(table) == 2 and ",erm," in table[1]                # one row: ERM on the demo set
    index = (out / "index.md").read_text()
    assert "[fgvc_supervised.ipynb](fgvc_supervised.ipynb): smoke profile" in index
    assert "[fgvc_supervised.csv](fgvc_supervised.csv)" in index and "Fine-grained datasets" in index
    manifest = json.loads((out / "reproduce.json").read_text())
    assert set(manifest["notebooks"]) == {"fgvc_supervised"}
    assert manifest["notebooks"]["fgvc_supervised"]["parameters"]["methods"] == ["erm"]

    before = _mtimes(out)
    second, seconds = _reproduce(out)
    assert second.returncode == EXIT_OK, second.stdout + second.stderr
    assert "skipped (up to date)" in second.stdout and "0 run(s) trained" in second.stdout
    assert seconds < 15, f"the second call took {seconds:.1f} s"
    assert _mtimes(out) == before                                  # no file written, added or removed


class _Bar:
    """Collects what ``train`` reports to its progress bar."""
    def __init__(self):
        self.n, self.postfix = 0, []

    def update(self, n):
        self.n += n

    def set_postfix_str(self, text, refresh=True):
        self.postfix.append(text)


def test_two_workers_train_two_runs_and_the_bar_counts_their_weighted_steps(tmp_path):
    from ctlib.grid_fit import is_finished
    from ctlib.reproduce_all import Plan, run_weight, train

    grid = table_grid("fgvc_supervised", "smoke", methods=["erm", "linear_probe"], results_dir=tmp_path,
                      epochs=1, iters_per_epoch=2, milestones=())   # two tiny runs
    runs = grid.unique_configs()
    bar = _Bar()
    failed = train(Plan("smoke", tmp_path, [], [], runs, workers=[None, None], threads=1), bar)
    assert failed == {} and all(is_finished(c) for c in runs)
    assert bar.n == sum(run_weight(c) for c in runs) and len(bar.postfix) == 2
    assert train(Plan("smoke", tmp_path, [], [], runs, workers=[None, None], threads=1), bar) == {}   # nothing left


def test_run_weights_count_concept_tuning_and_its_fast_mode_in_erm_steps(tmp_path):
    from ctlib.grid_fit import run_steps
    from ctlib.reproduce_all import run_weight

    erm, ct = table_grid("fgvc_supervised", "smoke", methods=["erm", "concept_tuning"], results_dir=tmp_path,
                         sample_rates=[100]).unique_configs()
    fast = ct.replace(method_args={**ct.method_args, "concept_features": "feature_map"})
    steps = run_steps(erm)
    assert run_steps(ct) == run_steps(fast) == steps
    assert (run_weight(erm), run_weight(ct), run_weight(fast)) == (steps, 4 * steps, 2 * steps)


def test_ctlib_run_writes_to_the_profiles_shared_folder():
    """`ctlib run NAME` without --out writes to results/<profile>: the profile given, else the notebook's default."""
    from ctlib.reproduce import _profile

    assert _profile("fgvc_supervised", {}) == "smoke"
    assert _profile("fgvc_supervised", {"profile": "paper"}) == "paper"
    assert _profile("quickstart", {}) == "smoke"
