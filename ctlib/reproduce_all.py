"""``ctlib reproduce``: every table notebook of a profile, from nothing to executed notebooks, CSV tables and
an index, in one command that can be interrupted and called again.

1. ``plan``: check every input and build each chosen notebook's grid (``ctlib.grids.table_grid``) before any
   work; a problem raises ``ReproduceError`` (or ``GridError``) naming the valid choices.
2. ``train``: the union of the grids' runs that have no record, by the plan's executor: ``local``, ``jobs``
   worker processes at a time (or one per GPU); ``submitit``, one Slurm job per run; ``ray``, one Ray task per
   run (``ctlib.executors``). Each run is trained through ``ctlib.engine.fit``: finished runs are skipped,
   interrupted ones resume from their checkpoint, a run that raises is reported and the others go on.
3. Each notebook is executed (``ctlib.reproduce.run_notebook``) unless nothing it depends on changed since
   its last successful execution (a fingerprint kept in ``<out>/reproduce.json``); a notebook that needs a
   failed run is reported failed, not executed on missing data.
4. ``<out>/index.md`` links every executed notebook and every CSV/PNG of the folder.

One tqdm bar spans all of it, weighted so that its time-left estimate means something: a run by its training
steps times ``step_factor`` (a Concept-Tuning step costs about four ERM steps, its fast mode two), a notebook by
``NOTEBOOK_WEIGHT`` steps.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .grids import DEFAULTS, NOTEBOOKS, TITLES, GridError, default_results_dir, table_grid
from .reproduce import NOTEBOOK_DIR, NotebookFailed, notebook_parameters, run_notebook
from .tables import is_fast_mode

MANIFEST = "reproduce.json"
INDEX = "index.md"
#: cost of one training step relative to ERM's (Concept-Tuning runs ~60 s where ERM runs ~17 s in the smoke profile)
METHOD_FACTOR = {"concept_tuning": 4}
#: the same for Concept-Tuning's fast concept mode (concept_features="feature_map"): 1.6x ERM at ResNet-50 / 224 px,
#: a quarter of the faithful step in the smoke profile (benchmarks/README.md)
FAST_MODE_FACTOR = 2
#: a notebook's execution (kernel start, imports, tables, plots) counted as this many ERM steps
NOTEBOOK_WEIGHT = 30
#: notebook parameters that change only how fast it runs, not what it shows: not in the fingerprint
NOT_FINGERPRINTED = ("threads",)
#: options whose value changes a notebook's grid: a notebook without the parameter cannot honour them
GRID_OPTIONS = ("data_roots", "seeds", "methods", "moco_checkpoint")
#: plan()'s ``slurm`` keywords (ctlib.executors.slurm_settings) and the options that give them
SLURM_FLAGS = {"partition": "--slurm-partition", "gpus": "--slurm-gpus", "time_min": "--slurm-time",
               "cpus": "--slurm-cpus", "options": "--slurm-option", "config": "--slurm-config"}


class ReproduceError(ValueError):
    """Bad input to ``ctlib reproduce``, found before anything is trained."""


@dataclass
class NotebookPlan:
    name: str
    grid: object                                   # ctlib.grids.Grid
    parameters: dict                               # what the notebook's parameters cell receives


@dataclass
class Plan:
    profile: str
    out: Path
    notebooks: list                                # NotebookPlan, in NOTEBOOKS order
    missing: list                                  # chosen notebooks whose file is not in notebooks/
    runs: list                                     # the union of the grids' distinct runs (RunConfig)
    workers: list                                  # one device override per worker (None: the config's own)
    threads: int                                   # torch threads per worker (per job, per Ray task)
    unused: list = field(default_factory=list)     # notes on options that do not apply to some notebook
    executor: str = "local"                        # ctlib.executors.EXECUTORS
    executor_options: dict = field(default_factory=dict)   # submitit: cluster, slurm; ray: address


@dataclass
class Outcome:
    name: str
    status: str                                    # ok, skipped, failed, missing
    seconds: float = 0.0
    message: str = ""


@dataclass
class Summary:
    out: Path
    notebooks: list                                # Outcome
    failed_runs: dict                              # run_id -> error (one line)
    trained: int = 0
    tracebacks: dict = field(default_factory=dict)  # run_id -> the failed run's traceback

    @property
    def ok(self) -> bool:
        return not self.failed_runs and all(o.status in ("ok", "skipped") for o in self.notebooks)

    def format(self) -> str:
        label = {"ok": "ok", "skipped": "skipped (up to date)", "failed": "FAILED", "missing": "MISSING"}
        lines = [f"{'notebook':<22} {'status':<22} {'seconds':>8}"]
        for o in self.notebooks:
            lines.append(f"{o.name:<22} {label[o.status]:<22} {o.seconds:>8.1f}")
        for o in self.notebooks:
            if o.message:
                lines.append(f"\n{o.name}: {o.message}")
        if self.failed_runs:
            lines.append(f"\n{len(self.failed_runs)} run(s) failed (fix the cause and call again; the others are kept):")
            lines += [f"  {rid}: {err}" for rid, err in self.failed_runs.items()]
        lines.append(f"\n{self.trained} run(s) trained; results and executed notebooks in {self.out}; "
                     f"index: {self.out / INDEX}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- input

def parse_list(text: str | None) -> list | None:
    """'a,b' → ['a', 'b']; None stays None."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ReproduceError(f"empty item in the list {text!r}: separate names with commas, e.g. erm,concept_tuning")
    return list(dict.fromkeys(items))


def parse_seeds(text: str | None) -> list | None:
    items = parse_list(text)
    if items is None:
        return None
    bad = [s for s in items if not s.isdigit()]
    if bad:
        raise ReproduceError(f"--seeds: non-negative integers separated by commas (e.g. 0,1,2), got {bad}")
    return [int(s) for s in items]


def parse_data_roots(pairs) -> dict:
    """['cub200=/data/cub'] → {'cub200': '/data/cub'}."""
    roots = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ReproduceError(f"--data-root takes NAME=PATH (e.g. cub200=/data/cub200), got {pair!r}")
        roots[name.strip()] = path.strip()
    return roots


def _unknown(kind: str, bad, valid) -> ReproduceError:
    hints = []
    for b in bad:
        close = difflib.get_close_matches(str(b), [str(v) for v in valid], n=1)
        if close:
            hints.append(f"{b!r}: did you mean {close[0]!r}?")
    what = f"unknown {kind}: {bad[0]!r}" if len(bad) == 1 else f"unknown {kind}s: {list(bad)}"
    return ReproduceError(f"{what}; choose from {', '.join(map(str, valid))}"
                          + (f" ({'; '.join(hints)})" if hints else ""))


def _check_device(device: str, gpus, here: bool = True) -> str:
    """``device`` checked (and 'auto' resolved) on this machine; only its spelling when the runs train elsewhere
    (``here`` False: Slurm or Ray, where this may be a login node without the GPUs the jobs get)."""
    import torch

    from .engine.run import resolve_device

    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise ReproduceError(f"--device {device!r} is not a torch device: use cpu, cuda, cuda:1, mps or auto") \
                from None
    if not here:
        return device
    try:
        dev = resolve_device(device)
    except RuntimeError as e:
        raise ReproduceError(f"--device {device!r}: {e}") from None
    if gpus is not None:
        if dev.type != "cuda":
            raise ReproduceError(f"--gpus needs a CUDA device (--device cuda), not {device!r}")
        bad = [g for g in gpus if g >= torch.cuda.device_count()]
        if bad:
            raise ReproduceError(f"--gpus {bad}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(dev) if device == "auto" else device


def _takes_methods(name: str, profile: str) -> bool:
    """Whether the notebook's grid is a list of methods (ablation and sensitivity define their own variants)."""
    return "methods" in DEFAULTS[name][profile]


def plan(profile: str = "smoke", only=None, device: str = "cpu", data_roots: dict | None = None, seeds=None,
         methods=None, moco_checkpoint=None, jobs: int | None = None, gpus=None, threads: int | None = None,
         out=None, executor: str = "local", submitit_cluster: str | None = None, slurm: dict | None = None,
         ray_address: str | None = None) -> Plan:
    """Check every input and build the chosen notebooks' grids; nothing is trained or executed.
    ``slurm``: the --slurm-* options (``ctlib.executors.slurm_settings``' keywords), for ``executor='submitit'``."""
    from .data import available
    from .experiments import PROFILES
    from .methods import METHODS

    if profile not in PROFILES:
        raise _unknown("profile", [profile], list(PROFILES))
    names = list(dict.fromkeys(only or NOTEBOOKS))
    bad = [n for n in names if n not in NOTEBOOKS]
    if bad:
        raise _unknown("notebook", bad, NOTEBOOKS)
    missing = [n for n in names if not (NOTEBOOK_DIR / f"{n}.ipynb").exists()]
    if only and missing:
        raise ReproduceError(f"notebook file(s) not written yet: {', '.join(f'notebooks/{n}.ipynb' for n in missing)}"
                             f"; the notebooks there now: {', '.join(sorted(p.stem for p in NOTEBOOK_DIR.glob('*.ipynb')))}")
    if methods is not None:
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise _unknown("method", bad, sorted(METHODS))
    if seeds is not None:
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise ReproduceError(f"seeds must be non-negative integers, got {bad}")
    roots = {}
    for name, path in (data_roots or {}).items():
        if name not in available():
            raise _unknown("dataset", [name], available())
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise ReproduceError(f"--data-root {name}={path}: {root} is not a folder (check it with "
                                 f"`ctlib data check {name} PATH`)")
        roots[name] = str(root)
    if jobs is not None and jobs < 1:
        raise ReproduceError(f"--jobs must be at least 1, got {jobs}")
    if jobs is not None and gpus is not None:
        raise ReproduceError("--jobs and --gpus: choose one (--gpus starts one worker per GPU)")
    if threads is not None and threads < 1:
        raise ReproduceError(f"--threads must be at least 1, got {threads}")
    if gpus is not None and (not gpus or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus)):
        raise ReproduceError(f"--gpus: GPU indices separated by commas (e.g. 0,1), got {gpus}")
    executor_options = _check_executor(executor, submitit_cluster, slurm, ray_address, jobs, gpus)
    device = _check_device(device, gpus, here=executor == "local")
    if moco_checkpoint:
        moco_checkpoint = str(Path(moco_checkpoint).expanduser().resolve())   # notebooks run in notebooks/
    out = Path(out).expanduser().resolve() if out else default_results_dir(profile)

    given = {"data_roots": roots or None, "seeds": seeds, "methods": methods, "moco_checkpoint": moco_checkpoint}
    plans, union, unused = [], {}, []
    for name in (n for n in NOTEBOOKS if n in names and n not in missing):
        options = dict(given)
        if not _takes_methods(name, profile):
            options["methods"] = None
            if methods is not None:
                unused.append(f"--methods does not apply to {name} (its variants are fixed: ctlib.grids)")
        grid = _grid(name, profile, device, out, options)
        params = _notebook_params(name, grid, profile, device, out, threads, options)
        plans.append(NotebookPlan(name, grid, params))
        for c in grid.unique_configs():
            union.setdefault(c.run_id(), c)
    workers = [f"cuda:{g}" for g in gpus] if gpus is not None else [None] * (jobs or 1)
    per_worker = threads or executor_options.get("slurm", {}).get("cpus") or max(1, (os.cpu_count() or 1) // len(workers))
    return Plan(profile, out, plans, missing, list(union.values()), workers, per_worker, unused, executor,
                executor_options)


def _check_executor(executor, submitit_cluster, slurm, ray_address, jobs, gpus) -> dict:
    """The executor's options, checked: installed, and no option of another executor."""
    from .executors import EXECUTORS, SUBMITIT_CLUSTERS, ExecutorError, install_hint, slurm_settings

    if executor not in EXECUTORS:
        raise _unknown("executor", [executor], list(EXECUTORS))
    slurm = {k: v for k, v in (slurm or {}).items() if v not in (None, [], (), "")}
    flags = {"cluster": "--submitit-cluster", "address": "--ray-address", **SLURM_FLAGS}
    given = {"cluster": submitit_cluster, "address": ray_address, **slurm}
    mine = {"local": (), "submitit": ("cluster", *SLURM_FLAGS), "ray": ("address",)}[executor]
    foreign = [flags[k] for k, v in given.items() if v is not None and k not in mine]
    if foreign:
        raise ReproduceError(f"{', '.join(foreign)}: not an option of --executor {executor} (--submitit-cluster "
                             f"and --slurm-* go with --executor submitit, --ray-address with --executor ray)")
    if executor != "local" and (jobs is not None or gpus is not None):
        raise ReproduceError(f"--jobs and --gpus choose the local executor's worker processes; with --executor "
                             f"{executor} every run is its own {'job' if executor == 'submitit' else 'task'} and "
                             f"the scheduler decides how many run at once")
    hint = install_hint(executor)
    if hint:
        raise ReproduceError(hint)
    if executor == "submitit":
        if submitit_cluster is not None and submitit_cluster not in SUBMITIT_CLUSTERS:
            raise _unknown("submitit cluster", [submitit_cluster], SUBMITIT_CLUSTERS)
        try:
            return {"cluster": submitit_cluster or "slurm", "slurm": slurm_settings(**slurm)}
        except ExecutorError as e:
            raise ReproduceError(str(e)) from None
    if executor == "ray":
        return {"address": ray_address}
    return {}


def _grid(name, profile, device, out, options):
    return table_grid(name, profile, data_roots=options["data_roots"], seeds=options["seeds"],
                      methods=options["methods"], device=device, results_dir=out,
                      moco_checkpoint=options["moco_checkpoint"])


def _notebook_params(name, grid, profile, device, out, threads, options) -> dict:
    """The parameters the notebook receives: those its parameters cell defines. An option that changes the grid
    but that the notebook has no parameter for is an error (the notebook would need other runs than trained)."""
    defined = notebook_parameters(name)
    wanted = {"profile": profile, "device": device, "threads": threads or os.cpu_count() or 1,
              "results_dir": str(out), **{k: v for k, v in options.items() if v is not None}}
    if defined is None:                                 # not plain Python: papermill gets them all
        return wanted
    lacking = [k for k in ("profile", "results_dir") if k not in defined]
    if lacking:
        raise ReproduceError(f"notebooks/{name}.ipynb has no parameter(s) {lacking} in its parameters cell: "
                             f"ctlib reproduce cannot point it at the {profile} profile's results in {out}")
    dropped = [k for k in GRID_OPTIONS if k in wanted and k not in defined]
    if dropped:
        try:
            same = [c.run_id() for c in _grid(name, profile, device, out, {**options, **dict.fromkeys(dropped)}).runs] \
                == [c.run_id() for c in grid.runs]
        except GridError:
            same = False
        if not same:
            raise ReproduceError(f"notebooks/{name}.ipynb has no parameter(s) {dropped}: it would build another grid "
                                 f"than the runs trained for it; leave out {', '.join(dropped)} or use --only")
    return {k: v for k, v in wanted.items() if k in defined}


# ------------------------------------------------------------------------------------------- training

def step_factor(config) -> int:
    """A training step of ``config``'s method counted in ERM steps (the bar's weights)."""
    if is_fast_mode(config.method, config.method_args):
        return FAST_MODE_FACTOR
    return METHOD_FACTOR.get(config.method, 1)


def run_weight(config) -> int:
    from .grid_fit import run_steps

    return run_steps(config) * step_factor(config)


def _worker(device, threads: int, tasks, events) -> None:
    """A training process: fit the runs it takes from ``tasks`` (``ctlib.executors.train_one``, with ``device``
    overriding the config's, which is not part of the run's identity) and report to ``events``."""
    try:
        from .engine import RunConfig
        from .executors import train_one

        while (item := tasks.get()) is not None:
            rid = RunConfig.from_dict(item).run_id()
            events.put(("start", os.getpid(), rid))
            result = train_one(item, device, threads, on_epoch=lambda epoch, rid=rid: events.put(("epoch", rid, epoch)))
            events.put(("failed", rid, result["error"]) if result["error"] else ("done", rid, ""))
    except KeyboardInterrupt:
        pass


def train(plan: Plan, bar=None) -> dict:
    """Train the plan's runs that have no record with its executor; returns {run_id: error} of runs that failed.
    ``bar`` (tqdm) advances by ``run_weight`` per run: after each epoch with the local executor, when its job or
    task ends with submitit and Ray."""
    from .grid_fit import is_finished

    todo = sorted((c for c in plan.runs if not is_finished(c)), key=run_weight, reverse=True)
    if not todo:
        return {}
    if plan.executor == "local":
        return _train_local(plan, todo, bar)
    from . import executors

    by_id = {c.run_id(): c for c in todo}

    def on_done(rid):
        if bar is not None:
            c = by_id[rid]
            bar.set_postfix_str(f"finished {c.method} {c.dataset} {c.sample_rate}% seed {c.seed}", refresh=False)
            bar.update(run_weight(c))

    if plan.executor == "submitit":
        return executors.train_submitit(todo, plan.threads, plan.executor_options, plan.out, on_done)
    return executors.train_ray(todo, plan.threads, plan.executor_options, on_done)


def _train_local(plan: Plan, todo: list, bar=None) -> dict:
    """``todo`` trained by the plan's worker processes (spawned here), the bar advanced after each epoch."""
    import multiprocessing as mp
    import queue

    by_id = {c.run_id(): c for c in todo}
    done = dict.fromkeys(by_id, 0)                     # weight counted so far per run
    ctx = mp.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for c in todo:
        tasks.put(asdict(c))
    workers = [ctx.Process(target=_worker, args=(dev, plan.threads, tasks, events), daemon=True)
               for dev in plan.workers[:len(todo)]]
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.start()
    current, failed, left = {}, {}, set(by_id)

    def advance(rid, weight):
        if bar is not None:
            bar.update(weight - done[rid])
        done[rid] = weight

    try:
        while left:
            try:
                kind, a, b = events.get(timeout=1.0)
            except queue.Empty:
                for w in workers:
                    if not w.is_alive() and current.get(w.pid) in left:
                        rid = current.pop(w.pid)
                        failed[rid] = f"its worker process died (exit code {w.exitcode}: killed, out of memory?)"
                        left.discard(rid)
                        advance(rid, run_weight(by_id[rid]))
                if not any(w.is_alive() for w in workers) and events.empty():
                    for rid in sorted(left):
                        failed[rid] = "not trained: every worker process has exited"
                    break
                continue
            if kind == "start":
                current[a] = b
                if bar is not None:
                    c = by_id[b]
                    bar.set_postfix_str(f"{c.method} {c.dataset} {c.sample_rate}% seed {c.seed}", refresh=False)
            elif kind == "epoch":
                c = by_id[a]
                advance(a, b * c.iters_per_epoch * step_factor(c))
            else:
                if kind == "failed":
                    failed[a] = b
                left.discard(a)
                advance(a, run_weight(by_id[a]))
        for w in workers:
            w.join()
    finally:
        for w in workers:                              # interrupted: give each the chance to stop cleanly
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    return failed


# ------------------------------------------------------------------------------------------ notebooks

def fingerprint(nb: NotebookPlan) -> str:
    """sha256 of the notebook's source, its parameters (less NOT_FINGERPRINTED) and, per run of its grid, the
    config hash and the record's finished_at: it changes when anything the notebook shows could change."""
    from .engine.run import run_dir
    from .records import RECORD_NAME, read_record

    h = hashlib.sha256((NOTEBOOK_DIR / f"{nb.name}.ipynb").read_bytes())
    params = {k: v for k, v in nb.parameters.items() if k not in NOT_FINGERPRINTED}
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    runs = sorted((c.hash(), read_record(run_dir(c) / RECORD_NAME).get("finished_at")) for c in nb.grid.unique_configs())
    h.update(json.dumps(runs).encode())
    return h.hexdigest()


def _read_manifest(out: Path) -> dict:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("notebooks"), dict) else {"notebooks": {}}
    except (OSError, ValueError):
        return {"notebooks": {}}


def _write_if_changed(path: Path, text: str) -> None:
    from .atomic import write_text_atomic

    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def execute(nb: NotebookPlan, out: Path, manifest: dict, failed_runs: dict, force: bool = False) -> Outcome:
    """Execute one notebook unless it is up to date; records a success in ``manifest``."""
    needed = [c.run_id() for c in nb.grid.unique_configs() if c.run_id() in failed_runs]
    if needed:
        return Outcome(nb.name, "failed", message=f"not executed: it needs {len(needed)} run(s) that failed: "
                                                  f"{', '.join(needed)}")
    t0 = time.time()
    try:
        fp = fingerprint(nb)
    except (OSError, ValueError) as e:                  # a run without a record, or a damaged record
        return Outcome(nb.name, "failed", message=f"not executed: {e}")
    entry = manifest["notebooks"].get(nb.name, {})
    if not force and entry.get("fingerprint") == fp and (out / f"{nb.name}.ipynb").exists():
        return Outcome(nb.name, "skipped", time.time() - t0)
    try:
        run_notebook(nb.name, out_dir=out, parameters=nb.parameters, progress=False)
    except Exception as e:                              # NotebookFailed names the cell; anything else: no kernel ...
        message = str(e) if isinstance(e, NotebookFailed) else f"not executed: {type(e).__name__}: {e}"
        return Outcome(nb.name, "failed", time.time() - t0, message)
    seconds = time.time() - t0
    manifest["notebooks"][nb.name] = {"fingerprint": fp, "executed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "seconds": round(seconds, 1), "profile": nb.grid.profile,
                                      "runs": len(nb.grid.unique_configs()),
                                      "parameters": {k: v for k, v in nb.parameters.items()}}
    return Outcome(nb.name, "ok", seconds)


def index_markdown(out: Path, manifest: dict) -> str:
    """Markdown linking every executed notebook (title, profile, date) and every CSV/PNG under ``out``
    (runs/ and standins/ left out); a file is listed under the notebook its name starts with."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.suffix.lower() in (".csv", ".png") and p.relative_to(out).parts[0] not in ("runs", "standins"))
    lines = [f"# Reproduced tables: {out.name}", "",
             f"Written by `ctlib reproduce`; executed notebooks, tables (CSV) and figures (PNG) in `{out}`.", ""]
    claimed = set()
    for name in NOTEBOOKS:
        entry = manifest["notebooks"].get(name)
        if not entry or not (out / f"{name}.ipynb").exists():
            continue
        lines += [f"## {name}: {TITLES[name]}", "",
                  f"[{name}.ipynb]({name}.ipynb): {entry.get('profile')} profile, runs: {entry.get('runs', '?')}, "
                  f"executed {entry.get('executed_at')}", ""]
        mine = [f for f in files if Path(f).name.startswith(name)]
        claimed.update(mine)
        lines += [f"- [{f}]({f})" for f in mine] + ([""] if mine else [])
    rest = [f for f in files if f not in claimed]
    if rest:
        lines += ["## Other files", ""] + [f"- [{f}]({f})" for f in rest] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- driver

def reproduce(plan: Plan, force: bool = False, progress: bool = True, log=print) -> Summary:
    """Train the plan's runs, execute its notebooks, write the manifest and the index (both only when their
    content changes). ``log`` receives the lines said before the bar starts."""
    from tqdm.auto import tqdm

    from .grid_fit import is_finished

    for note in plan.unused:
        log(f"note: {note}")
    for name in plan.missing:
        log(f"missing: notebooks/{name}.ipynb is not written yet; its table is not reproduced")
    todo = [c for c in plan.runs if not is_finished(c)]
    if plan.executor == "local":
        how = f"{len(plan.workers)} worker(s) × {plan.threads} thread(s)"
    elif plan.executor == "submitit":
        how = f"submitit ({plan.executor_options['cluster']} cluster, one job per run, {plan.threads} thread(s) each)"
    else:
        how = f"Ray ({plan.executor_options['address'] or 'a local instance'}, one task per run, " \
              f"{plan.threads} thread(s) each)"
    log(f"{plan.profile} profile: {len(plan.notebooks)} notebook(s), {len(plan.runs)} distinct runs, "
        f"{len(todo)} to train with {how}; results in {plan.out}")
    total = sum(run_weight(c) for c in todo) + NOTEBOOK_WEIGHT * len(plan.notebooks)
    fmt = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
    outcomes = [Outcome(n, "missing", message=f"notebooks/{n}.ipynb is not written yet") for n in plan.missing]
    with tqdm(total=total, desc="reproduce", bar_format=fmt, disable=not progress, dynamic_ncols=True) as bar:
        failed_runs = train(plan, bar)
        manifest = _read_manifest(plan.out)
        for nb in plan.notebooks:
            bar.set_postfix_str(f"notebook {nb.name}", refresh=True)
            outcomes.append(execute(nb, plan.out, manifest, failed_runs, force))
            bar.update(NOTEBOOK_WEIGHT)
    tracebacks, failed_runs = failed_runs, {rid: err.splitlines()[0] for rid, err in failed_runs.items()}
    if any(o.status == "ok" for o in outcomes):
        from .records import write_json_atomic

        manifest["profile"] = plan.profile
        write_json_atomic(plan.out / MANIFEST, manifest)
    if plan.out.exists():
        _write_if_changed(plan.out / INDEX, index_markdown(plan.out, manifest))
    order = {n: i for i, n in enumerate(NOTEBOOKS)}
    outcomes.sort(key=lambda o: order[o.name])
    trained = len(todo) - len([r for r in failed_runs if r in {c.run_id() for c in todo}])
    return Summary(plan.out, outcomes, failed_runs, trained, tracebacks)
