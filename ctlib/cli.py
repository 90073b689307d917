"""The ``ctlib`` command (also ``python -m ctlib``).

Subcommands are registered in ``COMMANDS``: each is a function ``(subparsers) -> None`` that adds
its parser and sets ``func`` (called with the parsed namespace, returning the exit status).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _data_check(args: argparse.Namespace) -> int:
    from ctlib.data.check import check_dataset

    report = check_dataset(args.dataset, args.root or None, images=not args.no_images,
                           progress=not args.no_progress and sys.stderr.isatty())
    print(report.format())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _data_list(args: argparse.Namespace) -> int:
    from ctlib.data import available
    from ctlib.data.datasets import LAYOUTS

    for name in available():
        layout = LAYOUTS.get(name)
        print(f"{name:<14} {layout.title if layout else 'embedded Fashion-MNIST subset (no ROOT needed)'}")
    return EXIT_OK


def add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    dsub.required = True

    check = dsub.add_parser(
        "check", help="validate a dataset folder",
        description="Load every split of DATASET from ROOT, open every image, and print per-split counts, the "
                    "number of classes and the problems found. Exits 1 when there are problems.")
    check.add_argument("dataset", metavar="DATASET", help="dataset name (`ctlib data list` shows them)")
    check.add_argument("root", metavar="ROOT", nargs="?", default="",
                       help="the folder torchvision's `root` means (or TLlib's folder holding image_list/); "
                            "not needed for `demo`")
    check.add_argument("--no-images", action="store_true", help="skip opening every image (layout and lists only)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=_data_check)

    lst = dsub.add_parser("list", help="list the registered datasets")
    lst.set_defaults(func=_data_list)


def _run(args: argparse.Namespace) -> int:
    from ctlib.reproduce import NotebookFailed, NotebookParameterError, parse_value, run_notebook

    params = {k: parse_value(v) for k, v in args.param}
    try:
        dest = run_notebook(args.notebook, args.out, params, kernel=args.kernel, cell_timeout=args.cell_timeout)
    except NotebookParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"executed notebook: {dest}\nresults: {dest.parent}")
    return EXIT_OK


def add_run_commands(sub) -> None:
    from ctlib.reproduce import available_notebooks

    run = sub.add_parser(
        "run", help="execute a notebook with papermill",
        description="Execute notebooks/NOTEBOOK.ipynb through papermill. Results and the executed notebook go to "
                    "--out (default results/PROFILE, shared by every notebook of that profile). Finished runs are "
                    "skipped and interrupted ones resume, so running the same command again continues where it "
                    "stopped. Parameters are checked against the notebook's parameters cell before anything runs. "
                    "A failing cell exits 1 naming the cell; "
                    "the failed notebook is written as NOTEBOOK.failed.ipynb and the last good NOTEBOOK.ipynb kept.")
    run.add_argument("notebook", metavar="NOTEBOOK", choices=available_notebooks(),
                     help=f"one of: {', '.join(available_notebooks())}")
    run.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a parameter of the notebook's parameters cell (Python literal or string), "
                          "e.g. -p profile paper -p device cuda")
    run.add_argument("--out", default=None, help="output folder")
    run.add_argument("--kernel", default="python3")
    run.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")
    run.set_defaults(func=_run)


def _convert_moco(args: argparse.Namespace) -> int:
    from ctlib.models import PretrainedWeightsError, convert_moco
    from ctlib.models.checkpoints import summarize

    try:
        done = convert_moco(args.src, args.dest, keep_fc=args.keep_fc)
    except PretrainedWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    fc = ", ".join(done["fc"]) or "none"
    print(f"wrote {args.dest}: {len(done['kept'])} tensors of module.encoder_q (prefix stripped)")
    print(f"MoCo projection fc ({fc}): {'kept' if args.keep_fc else 'dropped'}")
    print(f"dropped (not the query encoder): {summarize(done['dropped'])}")
    return EXIT_OK


def add_convert_commands(sub) -> None:
    conv = sub.add_parser(
        "convert-moco", help="convert a MoCo training checkpoint to a backbone state dict",
        description="Keep the query encoder of a MoCo v1/v2 training checkpoint (facebookresearch/moco: "
                    "keys module.encoder_q.*), strip that prefix and write torchvision-keyed backbone weights "
                    "to DEST, without the key encoder, the queue and (unless --keep-fc) MoCo's projection fc. "
                    "DEST works as `pretrained` (as does SRC itself).")
    conv.add_argument("src", metavar="SRC", help="MoCo training checkpoint (e.g. moco_v2_800ep_pretrain.pth.tar)")
    conv.add_argument("dest", metavar="DEST", help="output file")
    conv.add_argument("--keep-fc", action="store_true",
                      help="also keep the projection fc.* (a 128-d head, not a class head; never a source_head)")
    conv.set_defaults(func=_convert_moco)


def _reproduce(args: argparse.Namespace) -> int:
    from ctlib.grids import GridError
    from ctlib.reproduce_all import ReproduceError, parse_data_roots, parse_list, parse_seeds, plan, reproduce

    try:
        gpus = parse_list(args.gpus)
        if gpus is not None and not all(g.isdigit() for g in gpus):
            raise ReproduceError(f"--gpus: GPU indices separated by commas (e.g. 0,1), got {args.gpus!r}")
        chosen = plan(profile=args.profile, only=parse_list(args.only), device=args.device,
                      data_roots=parse_data_roots([p for group in args.data_root for p in group]),
                      seeds=parse_seeds(args.seeds), methods=parse_list(args.methods),
                      moco_checkpoint=args.moco_checkpoint, jobs=args.jobs,
                      gpus=None if gpus is None else [int(g) for g in gpus], threads=args.threads, out=args.out,
                      executor=args.executor, submitit_cluster=args.submitit_cluster, ray_address=args.ray_address,
                      slurm={"partition": args.slurm_partition, "gpus": args.slurm_gpus, "time_min": args.slurm_time,
                             "cpus": args.slurm_cpus, "options": args.slurm_option, "config": args.slurm_config})
    except (ReproduceError, GridError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = reproduce(chosen, force=args.force)
    except KeyboardInterrupt:
        print("\ninterrupted: call the same command again to continue (finished runs are kept, interrupted runs "
              "resume from their last finished epoch)", file=sys.stderr)
        if chosen.executor == "submitit" and chosen.executor_options["cluster"] == "slurm":
            print("the Slurm jobs already submitted go on (squeue --me; scancel them to stop them); a run one of them "
                  "still trains is reported locked, not trained twice", file=sys.stderr)
        return 130
    for rid, tb in summary.tracebacks.items():
        print(f"\nrun {rid} failed:\n{tb}", file=sys.stderr)
    print(summary.format())
    return EXIT_OK if summary.ok else EXIT_PROBLEMS


def add_reproduce_commands(sub) -> None:
    from ctlib.grids import NOTEBOOKS

    rep = sub.add_parser(
        "reproduce", help="train every run of a profile's table notebooks, then execute them",
        description="Reproduce the table notebooks of a profile: check every input, train the runs that have no "
                    "record (N at a time; finished runs are skipped, interrupted ones resume, so calling it again "
                    "after Ctrl-C loses at most the epoch in flight), execute each notebook whose inputs changed "
                    "since its last execution, and write OUT/index.md. Exits 0 when every notebook is ok, 1 naming "
                    "a failed run or notebook cell, 2 on bad input (before anything is trained).")
    rep.add_argument("--profile", default="smoke", help="smoke (default), cpu or paper")
    rep.add_argument("--only", metavar="NAME,...", help=f"only these notebooks, of: {', '.join(NOTEBOOKS)}")
    rep.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps or auto")
    rep.add_argument("--data-root", nargs="+", action="append", default=[], metavar="NAME=PATH",
                     help="a dataset's folder, e.g. --data-root cub200=/data/cub200 (check it with `ctlib data check`)")
    rep.add_argument("--seeds", metavar="0,1,2", help="seeds of every grid (default: the profile's)")
    rep.add_argument("--methods", metavar="erm,...", help="methods of the grids that compare methods (not ablation "
                                                           "or sensitivity)")
    rep.add_argument("--moco-checkpoint", metavar="PATH", help="MoCo checkpoint for fgvc_selfsupervised")
    rep.add_argument("--jobs", type=int, default=None, help="runs trained at once, each in its own process (default 1)")
    rep.add_argument("--gpus", metavar="0,1", help="one worker per GPU (with --device cuda)")
    rep.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: CPU cores / workers)")
    rep.add_argument("--out", default=None, help="results folder (default: results/<profile>)")
    rep.add_argument("--force", action="store_true", help="execute every notebook even if it is up to date")
    scale = rep.add_argument_group(
        "scale-out", "Train the runs elsewhere, one job (Slurm, via submitit) or task (Ray) per run, into the same "
                     "--out (which every node must see). Needs the extra: pip install -e '.[slurm]' or '.[ray]'. "
                     "Finished runs are skipped; a preempted or interrupted run resumes from its checkpoint when "
                     "submitted again.")
    scale.add_argument("--executor", default="local", metavar="NAME",
                       help="local (default: --jobs worker processes here), submitit or ray")
    scale.add_argument("--submitit-cluster", metavar="NAME",
                       help="slurm (default: sbatch), local (a process per job on this machine) or debug (in process)")
    scale.add_argument("--slurm-partition", metavar="NAME", help="Slurm partition")
    scale.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per job (default 1 with --device cuda, else 0)")
    scale.add_argument("--slurm-time", type=int, metavar="MINUTES",
                       help="time limit per job (default 240; a run that hits it is requeued and resumes)")
    scale.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per job (default: --threads)")
    scale.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. qos=high, account=proj, mem_gb=32 (repeatable)")
    scale.add_argument("--slurm-config", metavar="FILE",
                       help="JSON or TOML file with keys partition, gpus, time, cpus, options (a table); the "
                            "command line wins")
    scale.add_argument("--ray-address", metavar="ADDRESS",
                       help="Ray cluster to use: auto, HOST:PORT or ray://HOST:PORT (default: start one here)")
    rep.set_defaults(func=_reproduce)


#: every subcommand group; add new ones here
COMMANDS: list[Callable] = [add_data_commands, add_run_commands, add_convert_commands, add_reproduce_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctlib", description="Concept-Tuning reproducibility kit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
