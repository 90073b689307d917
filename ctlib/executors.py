"""Where ``ctlib reproduce`` trains its runs: ``local`` worker processes (``ctlib.reproduce_all``), Slurm jobs
through submitit, or Ray tasks.

The run is the unit of work: every executor calls ``train_one`` once per run, which trains it through
``ctlib.engine.fit`` into the shared results folder. So, whatever the executor, a finished run is not trained
again (fit returns its record), an interrupted or preempted one resumes from its checkpoint when submitted
again, and the run's lock (``ctlib.engine.lock``) keeps two processes from training the same run at once.

submitit and Ray are optional (extras ``slurm`` and ``ray``, pinned in requirements-scaleout.lock); they are
imported only when chosen.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import socket
import time
import traceback
from dataclasses import asdict
from pathlib import Path

try:                                   # the Slurm job class needs submitit's base; absent without the extra
    from submitit.helpers import Checkpointable
except ImportError:                    # pragma: no cover - only without submitit, where SubmititJob is never used
    Checkpointable = object

#: executor -> (module it needs, pyproject extra that installs it); local needs nothing
EXECUTORS = {"local": None, "submitit": ("submitit", "slurm"), "ray": ("ray", "ray")}
#: --submitit-cluster: slurm (sbatch), local (a process per job on this machine, for tests), debug (in process)
SUBMITIT_CLUSTERS = ("slurm", "local", "debug")
#: keys of --slurm-config files, as the --slurm-* options are named
SLURM_KEYS = {"partition": str, "gpus": int, "time": int, "cpus": int, "options": dict}
#: --slurm-time when none is given (minutes); a run cut by the time limit is requeued and resumes
DEFAULT_SLURM_TIME = 240
POLL_S = 1.0


class ExecutorError(ValueError):
    """Bad executor options, found before anything is submitted."""


def install_hint(executor: str, module: str | None = None) -> str | None:
    """None when ``executor``'s package (or ``module``) can be imported here, else the message saying how to
    install it."""
    needs = EXECUTORS[executor]
    if needs is None:
        return None
    module = module or needs[0]
    if importlib.util.find_spec(module) is not None:
        return None
    return (f"--executor {executor} needs the Python package {module!r}, which is not installed: from the "
            f"repository root, pip install -e '.[{needs[1]}]' (or the pinned set: pip install -r "
            f"requirements-scaleout.lock)")


# ------------------------------------------------------------------------------------------ the job

def train_one(config: dict, device: str | None, threads: int, on_epoch=None) -> dict:
    """Train one run (a ``RunConfig`` as a dict) with ``threads`` torch threads, on ``device`` when given
    (not part of the run's identity), through ``ctlib.engine.fit``: a finished run is returned, an interrupted
    one resumes. Returns {"run_id", "error": None or "Type: message\\ntraceback", "host"}; every executor
    calls this, so the numerics are the same whichever trains the run."""
    import torch

    torch.set_num_threads(threads)
    from .engine import RunConfig, fit

    run = RunConfig.from_dict(config)
    if device:
        run = run.replace(device=device)
    result = {"run_id": run.run_id(), "error": None, "host": socket.gethostname()}
    try:
        fit(run.replace(progress=False), on_epoch=on_epoch)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    return result


class SubmititJob(Checkpointable):
    """One run as a submitit job. On preemption or time-out submitit calls ``checkpoint``, which (as
    ``Checkpointable``'s) re-submits this same call: the requeued job's ``fit`` resumes from the run's last
    epoch checkpoint."""

    def __call__(self, config: dict, device: str | None, threads: int) -> dict:
        return train_one(config, device, threads)


# ------------------------------------------------------------------------------------------ options

def _typed(key: str, value, where: str):
    kind = SLURM_KEYS[key]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and kind is int and value < (0 if key == "gpus" else 1):
        ok = False
    if not ok:
        want = {"partition": "a partition name", "gpus": "an integer >= 0", "time": "minutes, an integer >= 1",
                "cpus": "an integer >= 1", "options": "a table of sbatch options (KEY = VALUE)"}[key]
        raise ExecutorError(f"{where}: {key} must be {want}, got {value!r}")
    return value


def read_slurm_config(path) -> dict:
    """The settings of a --slurm-config file: JSON (``.json``) or TOML, keys as SLURM_KEYS."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExecutorError(f"--slurm-config {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib                                   # Python 3.11+
            data = tomllib.loads(text)
    except ImportError:
        raise ExecutorError(f"--slurm-config {path}: TOML needs Python 3.11; write it as JSON (.json)") from None
    except ValueError as e:                                  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ExecutorError(f"--slurm-config {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}"
                            f": {e}") from None
    if not isinstance(data, dict):
        raise ExecutorError(f"--slurm-config {path}: expected a table of settings, got {type(data).__name__}")
    bad = [k for k in data if k not in SLURM_KEYS]
    if bad:
        raise ExecutorError(f"--slurm-config {path}: unknown key(s) {bad}; the keys are {', '.join(SLURM_KEYS)}")
    settings = {k: _typed(k, v, f"--slurm-config {path}") for k, v in data.items()}
    settings["options"] = {str(k): v for k, v in settings.get("options", {}).items()}
    return settings


def parse_slurm_options(pairs) -> dict:
    """['qos=high', 'mem_gb=32'] → {'qos': 'high', 'mem_gb': 32} (values as Python literals, else strings)."""
    from .reproduce import parse_value

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ExecutorError(f"--slurm-option takes KEY=VALUE (e.g. qos=high, account=myproj, mem_gb=32), "
                                f"got {pair!r}")
        options[key.strip()] = parse_value(value.strip())
    return options


def slurm_settings(partition=None, gpus=None, time_min=None, cpus=None, options=(), config=None) -> dict:
    """The --slurm-* settings: the --slurm-config file's, overridden by those given on the command line."""
    settings = read_slurm_config(config) if config else {}
    given = {"partition": partition, "gpus": gpus, "time": time_min, "cpus": cpus}
    for key, value in given.items():
        if value is not None:
            settings[key] = _typed(key, value, f"--slurm-{key}")
    settings["options"] = {**settings.get("options", {}), **parse_slurm_options(options)}
    return settings


def submitit_parameters(settings: dict, threads: int, cuda: bool) -> dict:
    """``AutoExecutor.update_parameters`` keywords for one run per job. An option that submitit knows (a
    generic one such as mem_gb, or a Slurm one such as qos, account, constraint) is passed as such; any other
    goes to sbatch as ``--KEY=VALUE`` (slurm_additional_parameters)."""
    from submitit import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor

    generic, known = set(AutoExecutor._valid_parameters()), set(SlurmExecutor._valid_parameters())
    params = {"name": "ctlib", "timeout_min": settings.get("time", DEFAULT_SLURM_TIME),
              "gpus_per_node": settings.get("gpus", 1 if cuda else 0), "cpus_per_task": settings.get("cpus", threads),
              "tasks_per_node": 1, "nodes": 1}
    if settings.get("partition"):
        params["slurm_partition"] = settings["partition"]
    extra = {}
    for key, value in settings.get("options", {}).items():
        if key in generic:
            params[key] = value
        elif key in known and key != "additional_parameters":
            params[f"slurm_{key}"] = value
        else:
            extra[key] = value
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


# ------------------------------------------------------------------------------------------ executors

def _error_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def train_submitit(runs, threads: int, options: dict, out: Path, on_done) -> dict:
    """Submit one submitit job per run (one Slurm job array) and wait for them; ``on_done(run_id)`` as each
    ends. Returns {run_id: error} of the runs that failed or were never submitted."""
    import submitit

    cluster = options.get("cluster") or "slurm"
    cuda = any(str(c.device).startswith("cuda") for c in runs)
    try:
        executor = submitit.AutoExecutor(folder=Path(out) / "submitit", cluster=cluster)
        executor.update_parameters(**submitit_parameters(options.get("slurm", {}), threads, cuda))
        with executor.batch():
            jobs = [executor.submit(SubmititJob(), asdict(c), None, threads) for c in runs]
    except Exception as e:                      # sbatch missing or refusing, a parameter submitit rejects ...
        why = f"not submitted to submitit's {cluster} cluster: {_error_line(e)}"
        return {c.run_id(): why for c in runs}
    failed, pending = {}, dict(zip(jobs, runs))
    while pending:
        for job in [j for j in pending if j.done()]:
            rid = pending.pop(job).run_id()
            try:
                result = job.result()
            except Exception as e:              # the job died (killed, out of memory, time-outs used up ...)
                failed[rid] = f"job {job.job_id} ended without a result: {_error_line(e)} (logs: {job.paths.stderr})"
            else:
                if result["error"]:
                    failed[rid] = result["error"]
            on_done(rid)
        if pending:
            time.sleep(POLL_S)
    return failed


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Raise ConnectionError at once when a ``host:port`` or ``ray://host:port`` address refuses connections
    (``ray.init`` would retry for minutes); None and 'auto' are left to Ray."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {host}:{port} ({e.strerror or e})") from None


def train_ray(runs, threads: int, options: dict, on_done) -> dict:
    """One Ray task per run (``num_cpus=threads``, one GPU each on CUDA), on the cluster at
    ``options['address']`` or on a Ray instance started here (None), stopped at the end if started here.
    Returns {run_id: error} of the runs that failed or were never submitted."""
    import ray

    address = options.get("address")
    cuda = any(str(c.device).startswith("cuda") for c in runs)
    started = False
    if not ray.is_initialized():
        try:
            _check_reachable(address)
            kwargs = {"include_dashboard": False} if address is None else {}
            ray.init(address=address, logging_level=logging.WARNING, **kwargs)
            started = True
        except Exception as e:                  # ConnectionError, a ray:// client time-out, ...
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            why = f"not submitted: could not connect to {where}: {_error_line(e)}"
            return {c.run_id(): why for c in runs}
    try:
        if started and address is None:        # a local instance has all its resources at once: check they fit
            cpus = ray.cluster_resources().get("CPU", 0)
            if threads > cpus:
                why = f"not submitted: a task needs {threads} CPUs (--threads), the local Ray instance has {cpus:g}"
                return {c.run_id(): why for c in runs}
        task = ray.remote(train_one).options(num_cpus=threads, num_gpus=1 if cuda else 0)
        refs = {task.remote(asdict(c), None, threads): c for c in runs}
        failed, pending = {}, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                rid = refs[ref].run_id()
                try:
                    result = ray.get(ref)
                except Exception as e:          # the worker died (node lost, out of memory ...) after Ray's retries
                    failed[rid] = f"Ray task ended without a result: {_error_line(e)}"
                else:
                    if result["error"]:
                        failed[rid] = result["error"]
                on_done(rid)
        return failed
    finally:
        if started:
            ray.shutdown()
