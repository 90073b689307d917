"""Execute notebooks in their default (smoke) profile and write their outputs back into notebooks/, so the
committed outputs are what nbval compares in CI. Sources are not touched: only outputs, execution counts
and metadata. Volatile parts are dropped: papermill/execution timestamps, progress widgets and stderr
progress lines.

    python scripts/refresh_outputs.py                 # every notebook
    python scripts/refresh_outputs.py cost ablation   # some

Runs go to results/smoke/runs (as under nbval), so runs shared between notebooks are trained once.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


def clean_outputs(outputs: list) -> list:
    kept = []
    for o in outputs:
        if o.get("output_type") == "stream" and o.get("name") == "stderr":
            continue                                  # progress bars, warnings
        if WIDGET in o.get("data", {}):
            continue                                  # a tqdm widget: no state is saved, nothing to show
        kept.append(o)
    return kept


def refresh(name: str) -> None:
    import papermill as pm

    src = NOTEBOOKS / f"{name}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / src.name
        pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=True)
        executed = json.loads(out.read_text(encoding="utf-8"))
    nb = json.loads(src.read_text(encoding="utf-8"))
    by_id = {c.get("id"): c for c in executed["cells"]}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        done = by_id[cell["id"]]
        cell["outputs"] = clean_outputs(done.get("outputs", []))
        cell["execution_count"] = done.get("execution_count")
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("execution", "papermill")}
    src.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"refreshed {src.relative_to(ROOT)}")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for n in names:
        refresh(n)
