"""Batch driver: execute the kit's notebooks with papermill, leaving executed notebooks and results.

Runs inside a notebook skip finished runs and resume interrupted ones (the engine's records and
checkpoints), so executing a notebook again after an interruption continues where it stopped.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def parse_value(text: str):
    """'3' → 3, '[15, 30]' → [15, 30], 'cuda' → 'cuda' (like papermill's -p, without YAML)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebook(name: str, out_dir=None, parameters: dict | None = None, kernel: str = "python3",
                 progress: bool = True, cell_timeout: int | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters``; results go to ``out_dir`` (default
    ``results/<name>``), the executed notebook beside them. A failing cell raises (never a silent success)."""
    import papermill as pm

    src = NOTEBOOK_DIR / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"no notebook {name!r}: choose one of {available_notebooks()}")
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "results" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"results_dir": str(out_dir.resolve()), **(parameters or {})}
    dest = out_dir / f"{name}.ipynb"
    log.info("executing %s → %s with %s", src, dest, params)
    pm.execute_notebook(str(src), str(dest), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                        progress_bar=progress, execution_timeout=cell_timeout)
    return dest
