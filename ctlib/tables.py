"""Tables from a grid's records: mean ± std over seeds under both reporting protocols, the published
numbers beside them (``data/references.csv``), CSV files beside the executed notebook.

Protocols (METHOD.md Decision 10), each labelled in every table:
- ``reference``: the authors' (and TLlib's) protocol: the best head at the best epoch, both chosen on the
  test split;
- ``honest``: the main head after the last epoch (or, with ``val_fraction``, at the epoch chosen on the
  validation split).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

PROTOCOLS = {"reference": "reference protocol: best head and epoch, chosen on test",
             "honest": "honest: main head, last epoch (or the epoch chosen on validation)"}
CONFIG_COLUMNS = ("method", "dataset", "sample_rate", "seed", "backbone")


#: how a Concept-Tuning run in the fast concept mode is named in tables: never as the paper's method, and
#: never joined to its published numbers
FAST_MODE_LABEL = "concept_tuning (fast mode: not the paper's method)"


def is_fast_mode(method: str, method_settings: dict | None) -> bool:
    """A Concept-Tuning run in the fast concept mode (``concept_features="feature_map"``)."""
    return method == "concept_tuning" and (method_settings or {}).get("concept_features") == "feature_map"


def method_label(method: str, method_settings: dict) -> str:
    """The method's name in tables: its registry name, except for the fast concept mode."""
    return FAST_MODE_LABEL if is_fast_mode(method, method_settings) else method


def grid_frame(grid, strict: bool = True):
    """One row per run of ``grid`` (a ``ctlib.grids.Grid``): its labels, settings, final top-1 under both
    protocols, the last epoch's top-1 of every head, and its cost. An unfinished run is an error
    (``strict``) or left out with a warning."""
    import pandas as pd

    from .engine.run import run_dir
    from .records import RECORD_NAME, read_record

    rows, missing = [], []
    for r in grid.runs:
        path = run_dir(r.config) / RECORD_NAME
        if not path.exists():
            missing.append(r.config.run_id())
            continue
        rec = read_record(path)
        final, last = rec["final"], rec["history"][-1]
        c = rec["config"]
        row = {**r.labels, **{k: c[k] for k in CONFIG_COLUMNS}, "run_id": rec["run_id"],
               "method": method_label(c["method"], rec.get("method_settings") or {}),
               "reference": final["reference"]["top1"], "reference_head": final["reference"]["head"],
               "reference_epoch": final["reference"]["epoch"],
               "honest": (final.get("val_selected") or final["main_last"])["top1"]}
        for head, m in last["test"].items():
            row[f"last_{head}"] = m["top1"]
        timing = rec.get("timing") or {}
        row.update({"step_s": timing.get("step_s"), "train_s": timing.get("train_s"), "eval_s": timing.get("eval_s"),
                    "prepare_s": (rec.get("prepare") or {}).get("time_s"), "wall_time_s": rec.get("wall_time_s"),
                    "peak_rss_mb": rec.get("peak_memory", {}).get("cpu_max_rss_mb"),
                    "peak_cuda_mb": rec.get("peak_memory", {}).get("cuda_max_allocated_mb"),
                    "device": rec.get("device")})
        rows.append(row)
    if missing:
        msg = (f"{len(missing)} run(s) of the {grid.notebook} grid have no record yet (train them first: the "
               f"notebook's fit cell, or `ctlib reproduce`): {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if strict:
            raise FileNotFoundError(msg)
        warnings.warn(msg, stacklevel=2)
    return pd.DataFrame(rows)


def summarize(frame, by: list, values=("reference", "honest")):
    """Mean, standard deviation (over seeds; NaN for one seed) and count of each of ``values`` per group."""
    grouped = frame.groupby(list(by), sort=False, dropna=False)
    out = grouped[list(values)].agg(["mean", "std"])
    out.columns = [f"{v}_{stat}" for v, stat in out.columns]
    out.insert(0, "n", grouped.size())
    return out.reset_index()


def mean_std(mean: float, std: float, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def add_references(summary, table: str, references=None, metric: str = "top1",
                   keys=("dataset", "sample_rate", "method", "backbone")):
    """``summary`` with the published number of each row (``published``, its ``source``) and
    ``diff`` = reference-protocol mean − published, joined on ``keys`` within ``table`` of references.csv."""
    from .references import load_references

    refs = load_references() if references is None else references
    refs = refs[(refs["table"] == table) & (refs["metric"] == metric)]
    keys = [k for k in keys if k in summary.columns]
    refs = refs.drop_duplicates(keys)[[*keys, "value", "source"]].rename(columns={"value": "published"})
    out = summary.copy()
    if "sample_rate" in keys:
        out["sample_rate"] = out["sample_rate"].astype("Int64")
    out = out.merge(refs, on=keys, how="left")
    out["diff"] = out["reference_mean"] - out["published"]
    return out


def display(summary, index, columns=None, value: str = "reference"):
    """A readable pivot of ``summary``: each cell ``mean ± std`` of ``value`` (a protocol)."""
    cells = summary.copy()
    cells["cell"] = [mean_std(m, s) for m, s in zip(cells[f"{value}_mean"], cells[f"{value}_std"])]
    if not columns:
        return cells.set_index(list(index))[["cell"]].rename(columns={"cell": PROTOCOLS[value]})
    return cells.pivot_table(index=list(index), columns=list(columns), values="cell", aggfunc="first", sort=False)


def accuracy_display(summary, index, columns=None):
    """The number of seeds, both protocols side by side, and the published numbers where the table has them."""
    import pandas as pd

    seeds = (summary.pivot_table(index=list(index), columns=list(columns), values="n", aggfunc="first", sort=False)
             if columns else summary.set_index(list(index))[["n"]])
    parts = {"n (seeds)": seeds, **{PROTOCOLS[p]: display(summary, index, columns, p) for p in PROTOCOLS}}
    if "published" in summary and summary["published"].notna().any():
        pub = summary.copy()
        pub["cell"] = [mean_std(v, None) for v in pub["published"]]
        parts["published (data/references.csv)"] = (
            pub.pivot_table(index=list(index), columns=list(columns), values="cell", aggfunc="first", sort=False)
            if columns else pub.set_index(list(index))[["cell"]])
    return pd.concat(parts, axis=1)


def published(table: str, references=None):
    """The published numbers of ``table`` in references.csv (what a run of the paper profile is compared with)."""
    from .references import load_references

    refs = load_references() if references is None else references
    return refs[refs["table"] == table].drop(columns=["table"]).reset_index(drop=True)


def write_csv(frame, results_dir, name: str) -> Path:
    """Write ``frame`` to ``results_dir/<name>.csv`` atomically; returns the path."""
    from .atomic import write_text_atomic

    path = Path(results_dir) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, frame.to_csv(index=False))
    return path
