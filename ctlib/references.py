"""Published numbers the kit compares its results with: ``data/references.csv``.

One row per published number: where it comes from (``source``), the table it belongs to (a notebook
name), dataset, sample rate, method (ctlib's name), pre-training, backbone, metric and value, and a note
(protocol, seed, hardware). The Concept-Tuning paper's own tables were not available to the kit; a user
who has the paper adds its rows to the file (``source`` = the paper) and every table shows them.
"""
from __future__ import annotations

from pathlib import Path

REFERENCES_CSV = Path(__file__).resolve().parents[1] / "data" / "references.csv"
COLUMNS = ("source", "table", "dataset", "sample_rate", "method", "pretraining", "backbone", "metric", "value", "note")


def load_references(path=None):
    """The reference numbers as a DataFrame (``sample_rate`` nullable integer, ``value`` float)."""
    import pandas as pd

    path = Path(path) if path else REFERENCES_CSV
    if not path.is_file():
        raise FileNotFoundError(f"no reference numbers at {path} (the kit ships data/references.csv)")
    frame = pd.read_csv(path, dtype={"note": str}, keep_default_na=False, na_values={"sample_rate": [""]})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    frame["sample_rate"] = frame["sample_rate"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame
