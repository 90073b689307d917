"""Run records: one JSON file per finished run, written atomically; read back into a DataFrame."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import atomic_write, write_text_atomic

RECORD_NAME = "record.json"


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def save_torch_atomic(obj, path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_record(path) -> dict:
    return json.loads(Path(path).read_text())


def find_records(results_dir, run_ids=None) -> list[dict]:
    """Records under ``results_dir`` (only those of ``run_ids`` when given, in that order)."""
    if run_ids is not None:
        paths = [Path(results_dir) / r / RECORD_NAME for r in run_ids]
        return [read_record(p) for p in paths if p.exists()]
    return [read_record(p) for p in sorted(Path(results_dir).glob(f"*/{RECORD_NAME}"))]


def records_frame(results_dir, run_ids=None, protocols=("reference", "main_last", "val_selected")):
    """One row per finished run: its main settings and its final metrics under each protocol."""
    import pandas as pd

    rows = []
    for r in find_records(results_dir, run_ids):
        c = r["config"]
        row = {"run_id": r["run_id"], "method": c["method"], "dataset": c["dataset"], "sample_rate": c["sample_rate"],
               "backbone": c["backbone"], "seed": c["seed"], "epochs": c["epochs"], "wall_time_s": r["wall_time_s"]}
        for p in protocols:
            res = r["final"].get(p)
            if res:
                row[f"{p}_top1"] = res["top1"]
                row[f"{p}_mean_class"] = res["mean_class"]
        rows.append(row)
    return pd.DataFrame(rows)


def history_frame(results_dir, run_ids=None):
    """One row per (run, epoch, split, head) with top-1 and mean per-class accuracy."""
    import pandas as pd

    rows = []
    for r in find_records(results_dir, run_ids):
        c = r["config"]
        for h in r["history"]:
            for split in ("test", "val"):
                for head, m in (h.get(split) or {}).items():
                    rows.append({"run_id": r["run_id"], "method": c["method"], "sample_rate": c["sample_rate"],
                                 "seed": c["seed"], "epoch": h["epoch"], "split": split, "head": head, **m})
    return pd.DataFrame(rows)
