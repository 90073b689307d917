"""Reliability of the notebook batch driver (`ctlib run`) and of the pinned environment.

The notebook tests execute a tiny throwaway notebook (written here into tmp_path, standard library
only) with papermill: a few seconds per execution.
"""
import hashlib
import json
import re
from pathlib import Path

import pytest

import ctlib.reproduce as reproduce
from ctlib.cli import EXIT_PROBLEMS, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[1]


def _cell(kind, source, tags=()):
    cell = {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _write_notebook(folder: Path, name="tiny") -> Path:
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}},
          "cells": [_cell("markdown", "# tiny"),
                    _cell("code", 'tag = "good"        # written into the results\nfail = False\n'
                                  'results_dir = "."\nsteps: int = 2\n', tags=["parameters"]),
                    _cell("code", "from pathlib import Path\nout = Path(results_dir)"),
                    _cell("code", 'check = "the cell that fails"\nif fail:\n    raise ValueError(f"boom {tag}")'),
                    _cell("code", '(out / "result.txt").write_text(tag)')]}
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """NOTEBOOK_DIR holding the throwaway notebook `tiny`; returns the output folder to use."""
    _write_notebook(tmp_path / "notebooks")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path / "notebooks")
    return tmp_path / "results"


def _saved_tag(nb_path: Path) -> str:
    """The `tag` value papermill injected into an executed notebook."""
    nb = json.loads(nb_path.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    return re.search(r'tag = "(\w+)"', "".join(injected[0]["source"])).group(1)


def test_notebook_parameters_are_the_top_level_names_of_the_parameters_cell(tiny):
    assert set(reproduce.notebook_parameters("tiny")) == {"tag", "fail", "results_dir", "steps"}


def test_failed_run_keeps_the_previous_notebook_and_names_the_cell(tiny, capsys):
    dest = reproduce.run_notebook("tiny", tiny, {"tag": "first"}, progress=False)
    assert dest == tiny / "tiny.ipynb" and _saved_tag(dest) == "first"
    assert (tiny / "result.txt").read_text() == "first"
    good = dest.read_bytes()

    code = main(["run", "tiny", "--out", str(tiny), "-p", "fail", "True", "-p", "tag", "second"])
    err = capsys.readouterr().err
    assert code == EXIT_PROBLEMS
    assert dest.read_bytes() == good                                  # the good notebook untouched
    failed = tiny / "tiny.failed.ipynb"
    assert failed.exists() and _saved_tag(failed) == "second"
    assert not list(tiny.glob("*.running.ipynb"))                     # no temporary left behind
    # the error names the failing cell: its index in the executed notebook, first line, the exception
    assert "cell 4" in err and 'check = "the cell that fails"' in err and "ValueError: boom second" in err
    assert str(failed) in err

    # a later successful run replaces the notebook and clears the stale failure
    reproduce.run_notebook("tiny", tiny, {"tag": "third"}, progress=False)
    assert _saved_tag(dest) == "third" and not failed.exists()


def test_unknown_parameter_is_an_error_before_anything_runs(tiny, monkeypatch):
    import papermill

    def never(*a, **k):
        raise AssertionError("papermill must not be called")

    monkeypatch.setattr(papermill, "execute_notebook", never)
    with pytest.raises(reproduce.NotebookParameterError) as e:
        reproduce.run_notebook("tiny", tiny, {"tga": "x"})
    msg = str(e.value)
    assert "'tga'" in msg and "did you mean 'tag'" in msg
    assert "fail, results_dir, steps, tag" in msg
    assert not tiny.exists()                                          # nothing written


def test_cli_unknown_parameter_exits_2_with_the_valid_names(tiny, monkeypatch, capsys):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("executed"))
    code = main(["run", "tiny", "--out", str(tiny), "-p", "fial", "True"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "unknown parameter 'fial'" in err and "did you mean 'fail'" in err and "results_dir" in err
    assert not tiny.exists()


def test_quickstart_parameters_include_results_dir():
    names = reproduce.notebook_parameters("quickstart")
    assert {"profile", "dataset", "methods", "results_dir"} <= set(names)


def test_parameters_cell_parsing(tmp_path, monkeypatch):
    nb = json.loads(_write_notebook(tmp_path).read_text())
    nb["cells"][1]["source"] = "%matplotlib inline\na, (b, *c) = 1, (2, 3)\nd: int = 4\ne: str\nf.x = 5\ng += 1\n"
    (tmp_path / "tiny.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path)
    assert reproduce.notebook_parameters("tiny") == {"a": "1, (2, 3)", "b": "1, (2, 3)", "c": "1, (2, 3)",
                                                     "d": "4", "e": None}


def _lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        # a pin, possibly with an environment marker (the CUDA wheels are Linux-only)
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)( ; .+)?", line.strip())
        assert m, f"requirements.lock: not a name==version pin: {line!r}"
        name = m.group(1).lower().replace("_", "-")
        assert name not in pins, f"requirements.lock: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_lock_pins_every_package():
    pins = _lock_pins(REPO / "requirements.lock")
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    # the top-level requirements are all in the lock, at their pinned version where requirements.in pins one
    for line in (REPO / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            name = name.lower().replace("_", "-")
            assert name in pins, f"{name} of requirements.in missing from requirements.lock"
            assert not version or pins[name] == version
    # transitive dependencies are pinned too (the CUDA wheels torch pulls on Linux, the Jupyter stack)
    assert {"numpy", "papermill", "nbclient", "jupyter-client", "triton", "nvidia-cudnn-cu13"} <= set(pins)
    assert "uv pip compile" in (REPO / "requirements.lock").read_text().splitlines()[1]


def test_record_versions_name_the_lock(monkeypatch, tmp_path):
    from ctlib.engine import run

    versions = run._versions()
    want = hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert versions["requirements_lock"] == want
    monkeypatch.setattr(run, "REPO_ROOT", tmp_path)                  # ctlib installed without the lock
    assert run._versions()["requirements_lock"] is None
