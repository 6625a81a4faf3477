"""The ``pal-adapters`` command: argument parsing only; the work is done by the modules it calls.

    pal-adapters train examples/glue_pal.yaml --max-steps 10 --set lr=3e-5
    pal-adapters eval runs/glue_pal/best examples/glue_pal.yaml --json
    pal-adapters predict runs/glue_pal/best --task sst2 "a gripping, funny film"
    pal-adapters inspect runs/glue_pal/best
    pal-adapters export runs/glue_pal/best --all-tasks -o all.onnx
    pal-adapters predict all.onnx --backend onnx --task sst2 "a gripping, funny film"

Mistakes a user can fix (a missing file, a bad field, a model saved for another base) print one
``error: ...`` line on stderr and exit with status 2; ``--debug`` shows the traceback instead.

This module imports nothing heavy at the top: ``--help``, ``--version`` and argument errors answer
without loading torch; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import __version__
from .cli_run import cmd_eval, cmd_train, load_saved, split_names

USER_ERRORS = (OSError, ValueError, KeyError, ImportError, yaml.YAMLError)


# ---- predict and inspect -----------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from .cli_predict import predict_lines, read_inputs

    rows = qa_inputs(args) or read_inputs(args.texts, args.input)
    if len(args.texts) == 2:
        print("note: the two texts are read as one pair (text, text_b); tasks that read one text skip it",
              file=sys.stderr)
    if args.backend == "onnx":  # model_dir is an exported graph; ONNX Runtime computes the logits
        from .cli_predict import load_graph
        from .export import onnx_logits

        (model, tokenizer), logits_fn = load_graph(args.model_dir, args.model), onnx_logits
    else:
        from .predict import task_logits

        (model, tokenizer), logits_fn = load_saved(args.model_dir, args.model), task_logits
    for line in predict_lines(model, tokenizer, rows, split_names(args.task), args.batch_size, args.max_length,
                              logits_fn):
        print(line)
    return 0


def qa_inputs(args: argparse.Namespace) -> list[dict[str, str]]:
    """``--question Q --context C`` as one input row (extractive QA tasks); ``[]`` when not given."""
    if args.question is None and args.context is None:
        return []
    if args.question is None or args.context is None or args.texts or args.input:
        raise ValueError("give --question and --context together, without TEXT or --input "
                         "(a JSONL --input file may hold 'question' and 'context' per line instead)")
    return [{"question": args.question, "context": args.context}]


def cmd_inspect(args: argparse.Namespace) -> int:
    from .cli_inspect import inspect_path, render_inspection

    info = inspect_path(args.path)
    print(json.dumps(info, indent=2) if args.json else render_inspection(info))
    return 0 if info["integrity"] == "ok" else 1  # a damaged save is described, and its status says so


# ---- export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from .export import card_path, export_all_tasks, export_task, require_onnx

    output = Path(args.output)
    if output.suffix != ".onnx":  # checked before a model is loaded
        raise ValueError(f"-o {args.output!r} must end in .onnx (the task card goes beside it as .json)")
    require_onnx(args.exporter)
    model, _ = load_saved(args.model_dir, args.model)
    if args.all_tasks:
        card = export_all_tasks(model, output, exporter=args.exporter, opset=args.opset)
    else:
        card = export_task(model, args.task, output, exporter=args.exporter, opset=args.opset)
    size = output.stat().st_size / 2**20
    print(f"wrote {output} ({size:.1f} MiB; outputs {card.outputs}) and its task card {card_path(output)}")
    return 0


# ---- the parser --------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a multi-task model from a run file")
    p.add_argument("run_yaml", help="run file: model, adapter, training: and tasks: or tasks_file:")
    p.add_argument("--data-dir", help="base folder of the tasks' local data (overrides data_dir)")
    p.add_argument("--model", help="encoder: a local folder, a hub name or 'minilm'")
    p.add_argument("--output-dir")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any training field, e.g. lr=3e-5")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in OUTPUT_DIR (an error if there is none)")
    p.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a saved model on the run file's dev sets")
    p.add_argument("model_dir")
    p.add_argument("run_yaml")
    p.add_argument("--data-dir")
    p.add_argument("--model", help="the base encoder (default: the run file's model)")
    p.add_argument("--tasks", action="append", help="comma-separated subset of tasks")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-examples", type=int, help="dev examples per task (default: the run's max_eval_examples)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict every (or the chosen) task for texts; one JSON line per input")
    p.add_argument("model_dir", help="a saved model folder (with --backend onnx: a graph from pal-adapters export)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="TEXT [TEXT_B] (or use --input)")
    p.add_argument("--input", help="JSONL file with 'text' (and 'text_b'), or 'question' and 'context', per line")
    p.add_argument("--question", help="extractive QA: the question (with --context); prints answer and span")
    p.add_argument("--context", help="extractive QA: the passage the answer is taken from")
    p.add_argument("--model", help="the base encoder (default: the one the model records)")
    p.add_argument("--task", action="append", help="a task (repeat or comma-separate; default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default: each task's own, "
                   "saved with the model)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch: the saved model in PyTorch; onnx: an exported graph in ONNX Runtime (the onnx extra; "
                   "--model names the tokenizer, default the graph's base model)")
    p.set_defaults(func=cmd_predict)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="describe a saved model folder or task folder (no model is loaded)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export one task, or all tasks, of a saved model as an ONNX graph")
    p.add_argument("model_dir")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="the task whose graph to write (output 'logits')")
    which.add_argument("--all-tasks", action="store_true",
                       help="one graph of every task (predict_all): one output per task, named by the task")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the graph; OUT.json is written beside it")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--model", help="the base encoder (default: the one the model records)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torchscript traces in seconds; dynamo (torch.export) gives the same graph more slowly")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    from .serve.cli import add_arguments  # argparse and the settings dataclass only: no torch, no FastAPI

    p = sub.add_parser("serve", help="serve every task of a saved model over HTTP (the serve extra)")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.cli import cmd_serve as serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pal-adapters", description="Multi-task adapters for HF encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (and dataset progress bars)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"pal-adapters {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_predict, _add_inspect, _add_export, _add_serve):
        add(sub)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; predict's texts may follow its options (``predict DIR --task t "a text"``),
    which argparse alone does not allow for a positional list after another positional."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and args.command == "predict" and not any(e.startswith("-") for e in extras):
        args.texts = [*args.texts, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def quiet_libraries(command: str) -> None:
    """No dataset-map or weight-loading progress bars (the training bar stays), for the commands
    that load those libraries anyway (``inspect`` and ``--help`` load neither)."""
    if command in ("train", "eval"):
        import datasets

        datasets.disable_progress_bars()
    if command in ("train", "eval", "predict", "export", "serve"):
        import transformers

        transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        quiet_libraries(args.command)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
