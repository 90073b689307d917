"""Accuracy and step time of Concept-Tuning's fast concept mode against the faithful mode, on real runs.

Trains (or loads, when already finished) Concept-Tuning with ``concept_features="crops"`` (the paper's
method) and ``"feature_map"`` (the fast mode: patch features pooled from the full-image feature map), the
same profile, dataset, sample rates and seeds otherwise, through the engine (``ctlib.engine.fit``), and
prints one row per run and the mean per mode, as a Markdown table. The runs go to the profile's shared
folder (``results/<profile>/runs``): a faithful run the notebooks already trained is reused.

Usage (from the repository root)::

    python benchmarks/fast_mode_accuracy.py                          # smoke profile, demo set, seeds 0,1,2
    python benchmarks/fast_mode_accuracy.py --profile cpu --seeds 0  # 600 steps at 160 px: about an hour on 2 cores
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("feature_map", "crops")     # the cheap one first


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="smoke", choices=("smoke", "cpu", "paper"))
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--sample-rates", default="100", help="comma-separated, e.g. 30,100")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--results-dir", default=None, help="default: results/<profile>/runs")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from ctlib.engine import fit
    from ctlib.experiments import run_config
    from ctlib.grids import default_results_dir

    results = a.results_dir or str(default_results_dir(a.profile) / "runs")
    rates = [int(r) for r in a.sample_rates.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for rate in rates:
        for seed in seeds:
            for mode in MODES:
                config = run_config(a.profile, "concept_tuning", a.dataset, rate, seed, data_root=a.data_root,
                                    method_args={"concept_features": mode}, device=a.device, results_dir=results)
                print(f"[{mode}] sample rate {rate}%, seed {seed}: {config.run_id()}", file=sys.stderr, flush=True)
                rec = fit(config)
                f = rec["final"]
                rows.append({"mode": mode, "rate": rate, "seed": seed, "reference": f["reference"]["top1"],
                             "main_last": f["main_last"]["top1"], "step_s": rec["timing"]["step_s"],
                             "run_id": rec["run_id"]})
    print(f"\n{a.profile} profile, {a.dataset}, device {a.device}\n")
    print("| mode | sample rate | seed | top-1 reference protocol | top-1 main head, last epoch | s / step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['rate']} % | {r['seed']} | {r['reference']:.1f} | {r['main_last']:.1f} | "
              f"{r['step_s']:.3f} |")
    for rate in rates:
        for mode in MODES:
            sel = [r for r in rows if r["mode"] == mode and r["rate"] == rate]
            mean = {k: statistics.mean(r[k] for r in sel) for k in ("reference", "main_last", "step_s")}
            print(f"| **{mode}, mean** | {rate} % | n={len(sel)} | {mean['reference']:.1f} | {mean['main_last']:.1f} | "
                  f"{mean['step_s']:.3f} |")


if __name__ == "__main__":
    main()
