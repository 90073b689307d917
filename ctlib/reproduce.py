"""Batch driver: execute the kit's notebooks with papermill, leaving executed notebooks and results.

Runs inside a notebook skip finished runs and resume interrupted ones (the engine's records and
checkpoints), so executing a notebook again after an interruption continues where it stopped.

Parameters are checked against the notebook's ``parameters``-tagged cell before anything runs (an
unknown name is an error, not a papermill warning followed by a run of the defaults). The notebook is
executed under a temporary name in the output folder and moved into place only on success: a failed
run leaves ``<name>.failed.ipynb`` beside the previous good ``<name>.ipynb``, which stays untouched.
"""
from __future__ import annotations

import ast
import difflib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookParameterError(ValueError):
    """A parameter the notebook's parameters cell does not define."""


class NotebookFailed(RuntimeError):
    """A cell of the notebook raised; ``failed_path`` holds the executed notebook with the error."""

    def __init__(self, message: str, failed_path: Path, cell_index: int | None = None):
        super().__init__(message)
        self.failed_path = failed_path
        self.cell_index = cell_index


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def parse_value(text: str):
    """'3' → 3, '[15, 30]' → [15, 30], 'cuda' → 'cuda' (like papermill's -p, without YAML)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _notebook_path(name: str) -> Path:
    src = NOTEBOOK_DIR / f"{name}.ipynb"
    if not src.exists():
        raise FileNotFoundError(f"no notebook {name!r}: choose one of {available_notebooks()}")
    return src


def _assigned_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):                  # a, b = ... assigns both
        return [n for elt in target.elts for n in _assigned_names(elt)]
    if isinstance(target, ast.Starred):
        return _assigned_names(target.value)
    return []                                                       # x.attr = ..., x[0] = ...: no new name


def notebook_parameters(name: str) -> dict[str, str | None] | None:
    """The names assigned at top level in the ``parameters``-tagged cell of ``notebooks/<name>.ipynb``,
    each with its default's source text; ``{}`` when the notebook has no such cell, None when that cell
    is not plain Python (after dropping IPython magics)."""
    nb = json.loads(_notebook_path(name).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
            try:
                body = ast.parse(source).body
            except SyntaxError:
                return None
            params = {}
            for node in body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    value = ast.get_source_segment(source, node.value) if node.value is not None else None
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for n in (n for t in targets for n in _assigned_names(t)):
                        params[n] = value
            return params
    return {}


def check_parameters(name: str, parameters: dict) -> None:
    """Raise NotebookParameterError for a name the notebook's parameters cell does not define."""
    valid = notebook_parameters(name)
    if valid is None:
        log.warning("cannot parse the parameters cell of %s: parameters not checked", name)
        return
    unknown = [k for k in parameters if k not in valid]
    if not unknown:
        return
    lines = []
    for k in unknown:
        close = difflib.get_close_matches(k, list(valid), n=1)
        lines.append(f"unknown parameter {k!r} for notebook {name!r}"
                     + (f" (did you mean {close[0]!r}?)" if close else ""))
    lines.append(f"valid parameters: {', '.join(sorted(valid))}" if valid
                 else f"notebook {name!r} has no cell tagged 'parameters'")
    raise NotebookParameterError("\n".join(lines))


def _profile(name: str, parameters: dict) -> str:
    """The profile a run of the notebook uses: the ``profile`` parameter given, else its default."""
    if "profile" in parameters:
        return parameters["profile"]
    default = (notebook_parameters(name) or {}).get("profile")
    try:
        return ast.literal_eval(default) if default else "smoke"
    except (ValueError, SyntaxError):
        return "smoke"


def _describe_failure(error, name: str, failed: Path) -> str:
    source = error.source if isinstance(error.source, str) else "".join(error.source or [])
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    count = f", In [{error.exec_count}]" if error.exec_count is not None else ""
    return (f"notebook {name!r} failed in cell {error.cell_index} (counting from 0{count}), which begins: {first}\n"
            f"{error.ename}: {error.evalue}\n"
            f"the failed notebook: {failed}; the last good one, if any, is kept as {name}.ipynb")


def run_notebook(name: str, out_dir=None, parameters: dict | None = None, kernel: str = "python3",
                 progress: bool = True, cell_timeout: int | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters``; results go to ``out_dir`` (default
    ``results/<profile>``, the folder every notebook of that profile shares), the executed notebook beside them
    as ``<name>.ipynb``.

    Unknown parameters raise NotebookParameterError before anything runs. A failing cell raises
    NotebookFailed (never a silent success); the previous ``<name>.ipynb`` is then kept and the failed
    one written to ``<name>.failed.ipynb``. A successful run removes a stale ``<name>.failed.ipynb``.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    src = _notebook_path(name)
    check_parameters(name, parameters or {})
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "results" / str(_profile(name, parameters or {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"results_dir": str(out_dir.resolve()), **(parameters or {})}
    dest, running, failed = (out_dir / f"{name}{suffix}.ipynb" for suffix in ("", ".running", ".failed"))
    log.info("executing %s → %s with %s", src, dest, params)
    try:
        pm.execute_notebook(str(src), str(running), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                            progress_bar=progress, execution_timeout=cell_timeout)
    except BaseException as e:          # interrupted or failed: keep the good notebook, set this one aside
        if running.exists():
            os.replace(running, failed)
        if isinstance(e, PapermillExecutionError):
            raise NotebookFailed(_describe_failure(e, name, failed), failed, e.cell_index) from e
        raise
    os.replace(running, dest)
    failed.unlink(missing_ok=True)
    return dest
