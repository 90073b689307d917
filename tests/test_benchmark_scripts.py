"""The benchmark scripts still run (at toy sizes; no timing is asserted: they measure, tests do not).

Cost: a few seconds (toy ResNet-18 steps at 64 px, one toy Sinkhorn).
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import sinkhorn_time  # noqa: E402
import step_floor  # noqa: E402


def test_step_floor_times_every_pass_and_both_steps():
    res = step_floor.main(["--backbone", "resnet18", "--size", "64", "--batch", "2", "--classes", "8",
                           "--repeats", "1"])
    assert set(res["passes_s"]) == {"query_full", "key_full", "key_crops", "query_crops", "optimiser"}
    assert all(t > 0 for t in res["passes_s"].values())
    p = res["passes_s"]
    assert res["floor_s"] == pytest.approx(p["query_full"] + 3 * p["key_full"] + p["key_crops"] + p["query_crops"]
                                           + p["optimiser"], abs=1e-3)
    assert res["floor_ratio"] == pytest.approx(res["floor_s"] / res["erm_step_s"], rel=1e-2)


def test_sinkhorn_time_against_a_git_revision_gives_the_same_plans():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    res = sinkhorn_time.main(["--batch", "2", "--classes", "8", "--K", "3", "--confusing", "4", "--repeats", "1",
                              "--baseline", "HEAD"])
    assert res["pairs"] == 2 * (1 + 3 + 4 * 3)
    assert res["iterations"]["current"] == res["iterations"]["baseline"] >= 1
    assert res["max_plan_difference"] < 1e-5
    assert set(res["speedup"]) == {"sinkhorn", "concept_loss"}
