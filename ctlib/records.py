"""Run records: one JSON file per finished run, written atomically; read back into a DataFrame.

Records are strict JSON (no NaN or infinity). A damaged record (truncated, not JSON, not a record) is an
error naming the file; the tables skip it with a warning unless ``strict=True``.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from .atomic import atomic_write, write_text_atomic

RECORD_NAME = "record.json"
REQUIRED_KEYS = ("run_id", "config", "config_hash", "history", "final")
_RETRAIN = "Delete it to train the run again."


class RecordError(ValueError):
    """A record file is damaged or not a record; the message names it and says what to do."""


def _first_nonfinite(obj, where: str = ""):
    """(key path, value) of the first NaN or infinite float in ``obj``, e.g. ('history[1].train.cls', nan)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "the value", obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _first_nonfinite(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as strict JSON; a NaN or infinity anywhere is an error naming its key path."""
    try:
        text = json.dumps(obj, indent=1, default=str, allow_nan=False)
    except ValueError as e:
        found = _first_nonfinite(obj)
        what = f"{found[0]} is {found[1]!r}" if found else str(e)
        raise ValueError(f"cannot write {path}: {what}, and NaN or infinity are not valid JSON (records are strict "
                         "JSON); nothing was written") from None
    write_text_atomic(path, text)


def save_torch_atomic(obj, path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_record(path) -> dict:
    """The record in ``path``; a damaged one raises ``RecordError`` naming it and saying what to do."""
    path = Path(path)
    try:
        rec = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise RecordError(f"run record {path} is damaged: not valid JSON ({getattr(e, 'msg', e)}{where}); it was "
                          f"probably cut short (full disk, interrupted copy). {_RETRAIN}") from None
    if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if k not in rec] if isinstance(rec, dict) else list(REQUIRED_KEYS)
        raise RecordError(f"{path} is not a run record (it lacks {', '.join(missing)}). {_RETRAIN}")
    found = _first_nonfinite(rec)
    if found:
        raise RecordError(f"run record {path} holds {found[1]!r} at {found[0]}: NaN or infinity are not valid "
                          f"JSON (a run that diverged, recorded by an older ctlib). {_RETRAIN}")
    return rec


def _read_all(paths, strict: bool) -> list[dict]:
    out = []
    for p in paths:
        try:
            out.append(read_record(p))
        except RecordError as e:
            if strict:
                raise
            warnings.warn(f"skipping a damaged record: {e}", stacklevel=3)
    return out


def find_records(results_dir, run_ids=None, strict: bool = False) -> list[dict]:
    """Records under ``results_dir`` (only those of ``run_ids`` when given, in that order). A damaged record
    is skipped with a warning naming it, or raises ``RecordError`` when ``strict``."""
    if run_ids is not None:
        paths = [Path(results_dir) / r / RECORD_NAME for r in run_ids]
        return _read_all([p for p in paths if p.exists()], strict)
    return _read_all(sorted(Path(results_dir).glob(f"*/{RECORD_NAME}")), strict)


def records_frame(results_dir, run_ids=None, protocols=("reference", "main_last", "val_selected"),
                  strict: bool = False):
    """One row per finished run: its main settings and its final metrics under each protocol (damaged
    records: see ``find_records``)."""
    import pandas as pd

    rows = []
    for r in find_records(results_dir, run_ids, strict):
        c = r["config"]
        row = {"run_id": r["run_id"], "method": c["method"], "dataset": c["dataset"], "sample_rate": c["sample_rate"],
               "backbone": c["backbone"], "seed": c["seed"], "epochs": c["epochs"], "wall_time_s": r.get("wall_time_s")}
        for p in protocols:
            res = r["final"].get(p)
            if res:
                row[f"{p}_top1"] = res["top1"]
                row[f"{p}_mean_class"] = res["mean_class"]
        rows.append(row)
    return pd.DataFrame(rows)


def history_frame(results_dir, run_ids=None, strict: bool = False):
    """One row per (run, epoch, split, head) with top-1 and mean per-class accuracy (damaged records: see
    ``find_records``)."""
    import pandas as pd

    rows = []
    for r in find_records(results_dir, run_ids, strict):
        c = r["config"]
        for h in r["history"]:
            for split in ("test", "val"):
                for head, m in (h.get(split) or {}).items():
                    rows.append({"run_id": r["run_id"], "method": c["method"], "sample_rate": c["sample_rate"],
                                 "seed": c["seed"], "epoch": h["epoch"], "split": split, "head": head, **m})
    return pd.DataFrame(rows)
