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
                    "--out (default results/NOTEBOOK). Finished runs are skipped and interrupted ones resume, so "
                    "running the same command again continues where it stopped. Parameters are checked against "
                    "the notebook's parameters cell before anything runs. A failing cell exits 1 naming the cell; "
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


#: every subcommand group; add new ones here
COMMANDS: list[Callable] = [add_data_commands, add_run_commands, add_convert_commands]


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
