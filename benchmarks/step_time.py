"""Time one training step of ERM and of Concept-Tuning, and their peak memory, in one run.

Each method runs in its own child process (``--worker METHOD``), so that the peak memory reported for a
method is that of a process that only ever ran that method. A child builds the backbone (random
weights), the method and the engine's optimiser (SGD, Nesterov, momentum 0.9, weight decay 5e-4,
``param_groups(0.01, 0.1)``), makes synthetic inputs (one random tensor per entry of
``method.view_kinds``, random labels with repeats), runs ``--warmup`` untimed steps and ``--steps`` timed
ones exactly as ``ctlib.engine.run.Run.train_epoch`` does them, and prints one JSON line.

The parent prints a short summary and, as its LAST line, one JSON object::

    {"erm_step_s": ..., "ct_step_s": ..., "time_ratio": ..., "erm_peak_mb": ..., "ct_peak_mb": ...,
     "memory_ratio": ..., "erm_model_mb": ..., "ct_model_mb": ..., "settings": {...}, ...}

``*_step_s`` is the median of the timed steps; ``*_peak_mb`` the peak resident set size of that
method's process (``ru_maxrss``); ``*_model_mb`` its resident set size after building model and
optimiser, before the first step (so ``peak - model`` is roughly the step's activations, gradients
and optimiser state). On CUDA the children also report ``torch.cuda.max_memory_allocated``.
``*_step_cpu_s`` / ``cpu_time_ratio`` are the same medians in process CPU time, which other processes
competing for the cores disturb less than wall time (``loadavg_1min`` is recorded for that reason).

Usage (from the repository root)::

    python benchmarks/step_time.py                         # ResNet-50, 224 px, batch 8, 200 classes
    python benchmarks/step_time.py --backbone resnet18 --steps 3
    python benchmarks/step_time.py --ct patch_forward=per_slot --ct sinkhorn_iters=100
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
METHODS = ("erm", "concept_tuning")
SHORT = {"erm": "erm", "concept_tuning": "ct"}


def split_spec(spec: str) -> tuple[str, dict]:
    """'concept_tuning[patch_forward=batched;K=8]' → ('concept_tuning', {'patch_forward': 'batched', 'K': 8})."""
    if "[" not in spec:
        return spec, {}
    name, rest = spec.split("[", 1)
    pairs = [kv for kv in rest.rstrip("]").split(";") if kv.strip()]
    return name, {k.strip(): _parse_value(v.strip()) for k, v in (kv.split("=", 1) for kv in pairs)}


def short(spec: str) -> str:
    name, extra = split_spec(spec)
    base = SHORT.get(name, name)
    return base + ("[" + ";".join(f"{k}={v}" for k, v in extra.items()) + "]" if extra else "")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="resnet50", help="resnet18/34/50/101/152 or efficientnet_lite0")
    p.add_argument("--size", type=int, default=224, help="input size in pixels (square)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--confusing", type=int, default=None, help="Concept-Tuning confusing classes (default classes-1)")
    p.add_argument("--K", type=int, default=40, help="Concept-Tuning queue length per class")
    p.add_argument("--patch-forward", choices=("grouped", "batched", "per_slot"), default=None,
                   help="Concept-Tuning patch_forward setting (default: the method's default)")
    p.add_argument("--ct", action="append", default=[], metavar="KEY=VALUE",
                   help="any other ConceptTuningSettings field (repeatable), e.g. --ct sinkhorn_iters=100")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=1,
                   help="child processes per method, run alternately (erm, ct, erm, ct, ...); step times are pooled "
                        "over them and the peak is their maximum; >1 evens out load from other processes")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and OMP/MKL threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="the run setting channels_last (auto: on for CPU and CUDA); a spec's [channels_last=...] wins")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="the run setting amp (auto: bf16/fp16 on CUDA, off elsewhere); a spec's [amp=...] wins")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated method specs: a name of ctlib.methods.METHODS, optionally with settings "
                        "in brackets, e.g. 'erm,concept_tuning[patch_forward=batched],concept_tuning' (the first "
                        "spec is the baseline of the ratios)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-step progress on stderr")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.confusing is None:
        a.confusing = a.classes - 1
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.steps < 1 or a.warmup < 0 or a.repeats < 1:
        p.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    return a


def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return text


RUN_KEYS = ("channels_last", "amp")      # run settings a spec may carry: not the method's


def run_settings(a: argparse.Namespace, spec: str) -> dict:
    """The run's layout and precision settings: --channels-last / --amp, overridden by the spec's brackets."""
    cl = {"auto": "auto", "on": True, "off": False}[a.channels_last]
    s = {"channels_last": cl, "amp": a.amp}
    s.update({k: v for k, v in split_spec(spec)[1].items() if k in RUN_KEYS})
    return s


def method_settings(a: argparse.Namespace, spec: str) -> dict:
    method, extra = split_spec(spec)
    extra = {k: v for k, v in extra.items() if k not in RUN_KEYS}
    if method != "concept_tuning":
        return extra
    s = {"K": a.K, "confusing": a.confusing}
    if a.patch_forward is not None:
        s["patch_forward"] = a.patch_forward
    for kv in a.ct:
        if "=" not in kv:
            raise SystemExit(f"--ct expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        s[k.strip()] = _parse_value(v.strip())
    return {**s, **extra}


# ---- child -----------------------------------------------------------------------------------------
def synthetic_prepared(method, num_images: int) -> dict | None:
    """Stand-ins of the pre-pass results (not timed: a pre-pass runs once per run, not per step)."""
    import torch

    if method.name == "co_tuning":
        return {"relationship": torch.softmax(torch.randn(method.head_target.out_features, 1000), 1)}
    if method.name == "lwf":
        return {"recorded": torch.randn(num_images, 1000)}
    if method.name == "delta" and method.settings.regularization == "attention_feature_map":
        return {"attention": torch.cat([torch.full((c,), 1.0 / c) for c in method.channels])}
    return None


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def build(a: argparse.Namespace, spec: str) -> SimpleNamespace:
    """What a child times for ``spec``: ``method``, ``optimizer``, ``precision``, synthetic ``views`` and
    ``labels``, and ``step(epoch)``, one engine step of them (also used by ``step_floor.py``)."""
    import torch

    sys.path.insert(0, str(REPO))
    from ctlib.engine.precision import Precision, train_step
    from ctlib.methods import build_method
    from ctlib.models import build_backbone

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    name = split_spec(spec)[0]
    settings = method_settings(a, spec)
    backbone = build_backbone(a.backbone, pretrained=False)
    if backbone.source_head is None:     # random weights: a stand-in ImageNet head for Co-Tuning and LWF
        backbone.source_head = torch.nn.Linear(backbone.channels, 1000)
    method = build_method(name, backbone, a.classes, a.size, settings).to(device)
    rs = run_settings(a, spec)
    precision = Precision.resolve(rs["channels_last"], rs["amp"], device)
    prepared = synthetic_prepared(method, a.batch)
    if prepared is not None:
        method.set_prepared(prepared)
    method.train()
    optimizer = torch.optim.SGD(method.param_groups(0.01, 0.1), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    g = torch.Generator().manual_seed(a.seed)
    views = [torch.randn(a.batch, 3, a.size, a.size, generator=g).to(device) for _ in method.view_kinds]
    # labels from a pool of about half the batch size, so some classes repeat within the batch
    pool = torch.randperm(a.classes, generator=g)[:max(1, min(a.classes, (a.batch + 1) // 2))]
    labels = pool[torch.randint(len(pool), (a.batch,), generator=g)].to(device)
    index = torch.arange(a.batch, device=device)

    def step(epoch: int) -> dict:      # as Run.train_epoch: engine.precision.train_step, then the optimiser
        extra = {"index": index} if getattr(method, "needs_index", False) else {}
        loss, out = train_step(method, optimizer, precision, views, labels, epoch, extra)
        loss.item()
        precision.step(optimizer)
        return out

    return SimpleNamespace(method=method, optimizer=optimizer, precision=precision, views=views, labels=labels,
                           step=step, settings=settings, device=device)


def worker(a: argparse.Namespace) -> dict:
    import torch

    spec = a.worker
    log = (lambda *x: None) if a.quiet else (lambda *x: print(f"[{short(spec)}]", *x, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    b = build(a, spec)
    method, precision, settings, device, step = b.method, b.precision, b.settings, b.device, b.step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_mb = _rss_mb()
    build_s = time.perf_counter() - t0
    log(f"built {a.backbone} {split_spec(spec)[0]} in {build_s:.1f}s, RSS {model_mb:.0f} MB, "
        f"{sum(p.numel() for p in method.parameters()) / 1e6:.1f}M parameters")

    times, cpu_times, last = [], [], {}
    for i in range(a.warmup + a.steps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        last = step(epoch=0)
        sync()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        timed = i >= a.warmup
        if timed:
            times.append(dt)
            cpu_times.append(dc)
        log(f"{'step' if timed else 'warm-up'} {i + 1}/{a.warmup + a.steps}: {dt:.3f}s "
            f"(CPU {dc:.2f}s, RSS {_rss_mb():.0f} MB, peak {_maxrss_mb():.0f} MB)")

    res = {"method": spec, "step_s": statistics.median(times), "step_times_s": [round(t, 4) for t in times],
           "step_cpu_s": statistics.median(cpu_times),
           "peak_mb": round(_maxrss_mb(), 1), "model_mb": round(model_mb, 1), "build_s": round(build_s, 2),
           "settings": settings, "precision": precision.describe(),
           "last_step": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()}}
    if device.type == "cuda":
        res["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return res


# ---- parent ----------------------------------------------------------------------------------------
def run_child(a: argparse.Namespace, method: str, argv: list[str]) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(a.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", method]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{method} worker failed (exit {proc.returncode}); its stderr is above")
    return json.loads(lines[-1])


def merge_runs(rs: list[dict]) -> dict:
    """One child's result, or several children's of one method pooled: median over all their timed steps,
    the largest peak, the median build RSS."""
    if len(rs) == 1:
        return rs[0]
    out = dict(rs[-1])
    out["step_times_s"] = [t for r in rs for t in r["step_times_s"]]
    out["step_s"] = statistics.median(out["step_times_s"])
    out["step_cpu_s"] = statistics.median(r["step_cpu_s"] for r in rs)
    out["peak_mb"] = max(r["peak_mb"] for r in rs)
    out["model_mb"] = statistics.median(r["model_mb"] for r in rs)
    if all("cuda_peak_mb" in r for r in rs):
        out["cuda_peak_mb"] = max(r["cuda_peak_mb"] for r in rs)
    out["per_process_step_s"] = [round(r["step_s"], 4) for r in rs]
    return out


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)), flush=True)
        return

    import torch
    load_before = os.getloadavg()[0]
    runs = {m: [] for m in a.methods}
    for r in range(a.repeats):
        for m in a.methods:
            if a.repeats > 1 and not a.quiet:
                print(f"[{short(m)}] repeat {r + 1}/{a.repeats}", file=sys.stderr, flush=True)
            runs[m].append(run_child(a, m, argv))
    res = {m: merge_runs(rs) for m, rs in runs.items()}
    out = {}
    for m, r in res.items():
        k = short(m)
        out[f"{k}_step_s"] = round(r["step_s"], 4)
        out[f"{k}_peak_mb"] = r["peak_mb"]
        out[f"{k}_model_mb"] = r["model_mb"]
        out[f"{k}_step_times_s"] = r["step_times_s"]
        out[f"{k}_step_cpu_s"] = round(r["step_cpu_s"], 4)
        out[f"{k}_step_min_s"] = round(min(r["step_times_s"]), 4)
        if "per_process_step_s" in r:
            out[f"{k}_per_process_step_s"] = r["per_process_step_s"]
        if "cuda_peak_mb" in r:
            out[f"{k}_cuda_peak_mb"] = r["cuda_peak_mb"]
    if "erm" in res and "concept_tuning" in res:
        e, c = res["erm"], res["concept_tuning"]
        out["time_ratio"] = round(c["step_s"] / e["step_s"], 3)
        out["memory_ratio"] = round(c["peak_mb"] / e["peak_mb"], 3)
        out["cpu_time_ratio"] = round(c["step_cpu_s"] / e["step_cpu_s"], 3)
        out["time_ratio_fastest"] = round(min(c["step_times_s"]) / min(e["step_times_s"]), 3)
        if "cuda_peak_mb" in e and "cuda_peak_mb" in c and e["cuda_peak_mb"]:
            out["cuda_memory_ratio"] = round(c["cuda_peak_mb"] / e["cuda_peak_mb"], 3)
        if "sinkhorn_iters" in c.get("last_step", {}):
            out["ct_sinkhorn_iters"] = c["last_step"]["sinkhorn_iters"]
    base = res[a.methods[0]]
    out["relative_to"] = a.methods[0]
    out["ratios"] = {short(m): {"time": round(r["step_s"] / base["step_s"], 3),
                                "cpu_time": round(r["step_cpu_s"] / base["step_cpu_s"], 3),
                                "memory": round(r["peak_mb"] / base["peak_mb"], 3)} for m, r in res.items()}
    out["settings"] = {"backbone": a.backbone, "size": a.size, "batch": a.batch, "classes": a.classes,
                       "confusing": a.confusing, "K": a.K, "steps": a.steps, "warmup": a.warmup,
                       "repeats": a.repeats,
                       "device": a.device, "methods": {short(m): r["settings"] for m, r in res.items()},
                       "precision": {short(m): r["precision"] for m, r in res.items()}}
    out["threads"] = a.threads
    out["torch"] = torch.__version__
    out["cpu_count"] = os.cpu_count()
    # other processes competing for the cores inflate wall times; the CPU times are less sensitive
    out["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]

    print(f"\n{a.backbone}, {a.size} px, batch {a.batch}, {a.classes} classes, confusing {a.confusing}, K {a.K}, "
          f"{a.threads} threads, {a.device}; median of {a.steps} steps after {a.warmup} warm-up"
          + (f", {a.repeats} processes per method" if a.repeats > 1 else ""))
    for m, r in res.items():
        pr = r["precision"]
        print(f"  {short(m):32s} [{'channels-last' if pr['channels_last'] else 'contiguous'}, amp {pr['amp']}] "
              f"step {r['step_s']:8.3f} s (fastest {min(r['step_times_s']):.3f} s, "
              f"CPU {r['step_cpu_s']:.2f} s)   peak RSS {r['peak_mb']:8.0f} MB "
              f"(after build {r['model_mb']:.0f} MB)"
              + (f"   CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""))
    if len(res) > 2 or "time_ratio" not in out:
        for m in res:
            q = out["ratios"][short(m)]
            print(f"  {short(m)} / {short(a.methods[0])}: time {q['time']:.2f}x (CPU time {q['cpu_time']:.2f}x), "
                  f"peak memory {q['memory']:.2f}x")
    if "time_ratio" in out:
        print(f"  concept_tuning / erm: time {out['time_ratio']:.2f}x (CPU time {out['cpu_time_ratio']:.2f}x), "
              f"peak memory {out['memory_ratio']:.2f}x; fastest steps {out['time_ratio_fastest']:.2f}x")
    # the children themselves add about --threads to the load average
    busy = out["loadavg_1min"][0] > 1.5 or out["loadavg_1min"][1] > a.threads + 1
    out["machine_busy"] = busy
    print(f"  1-min load average before / after: {out['loadavg_1min'][0]} / {out['loadavg_1min'][1]} "
          f"on {out['cpu_count']} CPUs"
          + (("  WARNING: other processes were competing for the cores; a multi-threaded step is then "
              "slowed unevenly (small ops most), so times and ratios are unreliable" if a.threads > 1 else
              "  WARNING: other processes were competing for the cores; times may be inflated") if busy else ""))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
