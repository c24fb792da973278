"""The ``lacoot`` command: thin subcommands over :mod:`lacoot.pipeline`.

Exit codes: 0 success, 2 bad input (unknown names, bad values, unreadable or mismatched files,
impossible budgets, a folder in use, a non-finite loss), 128 + the signal number when training was
stopped by SIGINT (130) or SIGTERM (143) after writing a checkpoint, 130 on any other interruption,
141 when the reader of the output went away (``lacoot models | head -3``). A user error is one
line, ``lacoot: error: ...``, naming the flag; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from ._version import __version__

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a Unix tool whose reader went away
INSTALL_CLI = "pip install 'lacoot[cli]'"
OPTIONAL = {"yaml": "pyyaml", "tqdm": "tqdm", "matplotlib": "matplotlib", "PIL": "pillow"}


def _fields(cls: type, keys: Sequence[str] | None = None) -> list[Field]:
    by_name = {f.name: f for f in fields(cls)}
    return [by_name[k] for k in keys] if keys is not None else list(by_name.values())


def _help(f: Field, default: Any) -> str:
    """The help text of an option: its own, its valid names (from their registry), its
    default."""
    from .config import option_spec

    spec = option_spec(f)
    names = spec.names()
    listed = f" (one of: {', '.join(names)})" if names else ""
    shown = list(default) if isinstance(default, tuple) else default
    return f"{spec.help}{listed} (default: {shown})".replace("%", "%%")  # argparse formats it


def add_options(
    parser: argparse.ArgumentParser | Any, cls: type, keys: Sequence[str] | None = None
) -> None:
    """One flag per field of the option dataclass ``cls`` (``--snake-case`` of the field
    name), its type, help and valid names taken from the field. The parser's defaults are
    None, so a config file (and then the dataclass's own default) fills what is not given."""
    from .config import base_type, default_of, option_spec

    for f in _fields(cls, keys):
        flag, kind = "--" + f.name.replace("_", "-"), base_type(f)
        hidden = option_spec(f).experimental  # accepted, but out of --help
        common = {"dest": f.name,
                  "help": argparse.SUPPRESS if hidden else _help(f, default_of(f))}  # fmt: skip
        if kind == "dict":
            parser.add_argument(flag, type=_parse_kv, action="append", **common)
        elif kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.startswith("tuple"):
            many = "+" if kind == "tuple[int]" else "*"
            item = int if kind == "tuple[int]" else str
            parser.add_argument(flag, type=item, nargs=many, **common)
        else:
            item = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, type=item, **common)
        parser.set_defaults(**{f.name: None})


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of ``cls`` given on the command line."""
    values = {f.name: getattr(args, f.name, None) for f in fields(cls)}
    return {k: dict(v) if k == "model_args" else v for k, v in values.items() if v is not None}


def _parse_kv(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; the value read as JSON or a Python literal (``[4, 4, 8]``, ``true``,
    ``1e-3``), else kept as text (``stem=cifar``). Needs no YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, such as stem=cifar")
    return key.strip(), _literal(value.strip())


def _literal(value: str) -> Any:
    for read in (json.loads, ast.literal_eval):
        try:
            return read(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return value


def _run_config(args: argparse.Namespace) -> Any:
    """Defaults < config file < command-line flags; with ``--resume``, the options the run
    was trained with take the place of the defaults."""
    from .config import RunConfig

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_config(Path(args.config)))
    values |= _given(args, RunConfig)
    from .model_source import split_source

    if split_source(values.get("model", ""))[0] == "hf":  # a language model's own defaults
        from .config import LM_DEFAULTS

        values = {"dataset": "text", **LM_DEFAULTS} | values
    if args.resume:
        from .pipeline import recorded_options

        out = values.get("out", RunConfig.__dataclass_fields__["out"].default)
        values = recorded_options(out) | values | {"out": out}
    return RunConfig.from_dict(values)


def _read_config(path: Path) -> dict[str, Any]:
    """A config file's options: JSON, or YAML (needs pyyaml)."""
    if path.is_dir():
        raise ValueError(f"--config {str(path)!r} is a folder; expected a YAML or JSON file")
    if not path.is_file():
        raise ValueError(f"--config {str(path)!r} does not exist; expected a YAML or JSON file")
    text = path.read_text()
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = _read_yaml(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {str(path)!r} must hold a mapping of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _read_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ModuleNotFoundError:
        raise ValueError(
            f"--config {str(path)!r} is YAML, which needs pyyaml: {INSTALL_CLI} (or write the "
            "options as JSON)"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"--config {str(path)!r} is not valid YAML ({first})") from None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ------------------------------------------------------------------------------- subcommands
def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import env_rank
    from .pipeline import run_training

    cfg = _run_config(args)
    ckpt, history = run_training(cfg, overwrite=args.overwrite, resume=args.resume)
    if env_rank() != 0:
        return 0
    last = history[-1] if history else {}
    what = "next-token accuracy" if cfg.dataset == "text" else "accuracy"
    print(
        f"trained {cfg.model} on {cfg.dataset} for {cfg.epochs} epochs (lambda = {cfg.lam}); "
        f"val {what} {last.get('val_accuracy', float('nan')):.2f}%; checkpoint {ckpt}"
    )
    return 0


BROUGHT_OPTIONS = ("model", "dataset", "seq_len", "test_fraction", "batch_size")


def _source(args: argparse.Namespace) -> Any:
    """What score, collapse and export work on: the checkpoint, or the model named by
    ``--model`` (:class:`lacoot.lm.Brought`) with its text corpus."""
    from .config import LM_DEFAULTS, RunConfig
    from .lm import Brought

    if args.checkpoint is not None and args.model is not None:
        raise ValueError(f"a checkpoint ({args.checkpoint!r}) and --model {args.model!r}; "
                         "expected one of them")  # fmt: skip
    if args.checkpoint is not None:
        return args.checkpoint
    if args.model is None:
        raise ValueError(
            f"lacoot {args.command} needs a checkpoint (written by lacoot train) or --model "
            "hf:FOLDER / hf:FILE.gguf with --dataset text --data-dir DIR"
        )
    given = {k: getattr(args, k) for k in BROUGHT_OPTIONS if getattr(args, k) is not None}
    given = {"dataset": "text", "batch_size": LM_DEFAULTS["batch_size"]} | given
    cfg = RunConfig.from_dict(given)  # checks each value, names the flag
    return Brought(model=cfg.model, data_dir=args.data_dir, dataset=cfg.dataset,
                   seq_len=cfg.seq_len, test_fraction=cfg.test_fraction,
                   batch_size=cfg.batch_size)  # fmt: skip


def _brought(args: argparse.Namespace) -> bool:
    """Whether the command works on a model named by --model rather than a checkpoint."""
    return getattr(args, "model", None) is not None and args.checkpoint is None


def _language_model(args: argparse.Namespace) -> bool:
    """Whether score, collapse or export work on a language model: ``--model hf:...`` or a
    checkpoint of one."""
    from .pipeline import is_language_model

    if _brought(args):
        return True
    return args.checkpoint is not None and is_language_model(args.checkpoint)


def cmd_score(args: argparse.Namespace) -> int:
    from .pipeline import run_scoring

    scores = run_scoring(
        _source(args), args.criterion, args.device, args.data_dir, args.seed, out=args.out,
        overwrite=args.overwrite, val_from=args.val_from, progress=not args.no_progress,
    )  # fmt: skip
    _print_json(scores)
    return 0


EXPORT_OPTIONS = ("criterion", "repair", "calib_samples")  # the collapse options of export


def _collapse_config(args: argparse.Namespace, keys: Sequence[str] | None = None) -> Any:
    """The collapse options given (those of ``keys``); a language model's defaults
    (:data:`lacoot.config.LM_DEFAULTS`) in place of the others' where a flag is not given."""
    from .config import CollapseConfig

    given = _given(args, CollapseConfig)
    if _language_model(args):
        given = CollapseConfig.lm_defaults() | given
    return CollapseConfig.from_dict({k: v for k, v in given.items() if keys is None or k in keys})


def cmd_collapse(args: argparse.Namespace) -> int:
    from .pipeline import run_collapse

    source = _source(args)
    if args.out:
        out = Path(args.out)
    elif _brought(args):
        raise ValueError(f"--model {args.model!r} needs --out: the report folder")
    else:
        out = Path(args.checkpoint).parent / "collapse"
    report = run_collapse(
        source, out, _collapse_config(args), device=args.device,
        data_dir=args.data_dir, seed=args.seed, overwrite=args.overwrite,
        progress=not args.no_progress, val_from=args.val_from,
    )  # fmt: skip
    _summarise(report, out)
    return 0


def _summarise(report: dict[str, Any], out: Path) -> None:
    from .report import metric_text

    chosen = report["chosen"]
    sweep = report["sweeps"][report["criterion"]]
    full, metric = sweep["points"][0], sweep.get("metric", "top1_accuracy")
    name, show = metric_text(metric)
    tokens = ""
    if "token_accuracy" in chosen:
        was, now = full["token_accuracy"]["test"], chosen["token_accuracy"]["test"]
        tokens = f", next-token accuracy {_pct(was)} -> {_pct(now)}"
    print(
        f"removed {chosen['k']} blocks {chosen['removed']}: test {name} "
        f"{show(full['test_accuracy'])} -> {show(chosen['test_accuracy'])}{tokens}, MACs "
        f"{full['macs'] / 1e6:.2f} M -> {chosen['macs'] / 1e6:.2f} M "
        f"(repair {report['repair']['method']!r}; without it "
        f"{show(chosen['unrepaired']['test_accuracy'])}); report in {out}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def cmd_export(args: argparse.Namespace) -> int:
    from .config import CollapseConfig
    from .pipeline import run_export

    blocks: int | list[str] | None = None
    if args.blocks is not None:
        text = args.blocks.strip()
        blocks = int(text) if text.isdigit() else [n for n in text.split(",") if n]
    given = any(k in EXPORT_OPTIONS for k in _given(args, CollapseConfig))
    report = False if args.report == "none" else args.report
    done = run_export(
        _source(args), args.output, blocks, args.format,
        _collapse_config(args, EXPORT_OPTIONS) if given else None, report=report,
        device=args.device, data_dir=args.data_dir, seed=args.seed, overwrite=args.overwrite,
        fold_bn=args.fold_bn, optimize=args.optimize, val_from=args.val_from,
        embed_normalization=args.embed_normalization, progress=not args.no_progress,
    )  # fmt: skip
    if args.format == "onnx":
        diff = done["onnx_max_abs_diff"]
        print(
            "onnxruntime is not installed: the ONNX file was not checked"
            if diff is None
            else f"onnxruntime check: max abs difference {diff:.2e}"
        )
    timed = {"torchscript": "TorchScript"}.get(args.format, "eager PyTorch")
    if done["optimized"]:
        timed += ", after torch.jit.optimize_for_inference"
    if done["report"] is not None:
        print(f"following {done['report']}: its collapse with {done['k']} blocks removed")
    print(
        f"exported the model without {done['removed']} to {done['path']} ({done['format']}"
        + (", batch norm folded" if done["folded_bn"] else "")
        + (", frozen" if done["optimized"] else "")
        + f"): {done['macs'] / 1e6:.2f} M MACs per sample, {done['params'] / 1e6:.3f} M "
        f"parameters, {done['latency_ms']:.2f} ms per sample (batch 1, {timed})"
    )
    cond = done["latency_conditions"]
    if cond["under_load"]:
        print(f"lacoot: warning: the latency was taken under load ({'; '.join(cond['reasons'])}); "
              "measure again on an idle machine", file=sys.stderr)  # fmt: skip
    if done["sidecar"] is not None and not _language_model(args):
        takes = (
            "pixel / 255: the normalisation is its first layer"
            if done["normalization_embedded"]
            else "(pixel / 255 - mean) / std: normalise before calling it"
        )
        print(f"its input: {takes}; mean, std, input size and class names in {done['sidecar']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run_all

    cfg = _run_config(args)
    report = run_all(cfg, overwrite=args.overwrite, resume=args.resume)
    if report is not None:  # None: not rank 0 under torchrun
        _summarise(report, Path(cfg.out))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


# ------------------------------------------------------------------------------------ parser
def _checkpoint_options(p: argparse.ArgumentParser) -> None:
    from .config import RunConfig

    p.add_argument("checkpoint", nargs="?", help="checkpoint.pt written by lacoot train (or "
                   "--model hf:... with --dataset text instead)")  # fmt: skip
    shared = ["device", "data_dir", "seed", "val_from"]  # declared once, in RunConfig
    add_options(p, RunConfig, [*shared, *BROUGHT_OPTIONS])
    p.set_defaults(**{k: RunConfig.__dataclass_fields__[k].default for k in shared})


def _run_parser(sub: Any, name: str, func: Any, with_collapse: bool, **kw: Any) -> None:
    """``train`` and ``run``: every option of the run, a config file, resume and overwrite."""
    from .config import CollapseConfig, RunConfig

    p = sub.add_parser(name, **kw)
    p.add_argument("--config", help="YAML file of options (flags override it)")
    collapse = {f.name for f in fields(CollapseConfig)}
    keys = [f.name for f in fields(RunConfig) if with_collapse or f.name not in collapse]
    add_options(p, RunConfig, keys)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace results already in OUT")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from .config import CollapseConfig
    from .export import FORMATS

    parser = argparse.ArgumentParser(
        prog="lacoot",
        description="Make deep networks shallower with LaCoOT (Layer Collapse through Optimal "
        "Transport): train with a Max-Sliced Wasserstein penalty, then remove blocks.",
    )
    parser.add_argument("--version", action="version", version=f"lacoot {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub, "train", cmd_train, False, help="train a model with the LaCoOT penalty")

    p = sub.add_parser("score", help="score the blocks of a trained checkpoint")
    _checkpoint_options(p)
    p.add_argument("--criterion", nargs="+", default=["msw"], help="one or more criteria")
    p.add_argument("--out", help="also write the scores to OUT/scores.json (OUT: a folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier OUT/scores.json")
    p.add_argument("--no-progress", action="store_true", help="print no progress lines")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("collapse", help="sweep, choose within a budget, report")
    _checkpoint_options(p)
    add_options(p, CollapseConfig)
    p.add_argument("--no-progress", action="store_true", help="print no progress lines")
    p.add_argument("--out", help="report folder (default: beside the checkpoint, collapse/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in OUT")
    p.set_defaults(func=cmd_collapse)

    p = sub.add_parser("export", help="write the physically shallower model")
    _checkpoint_options(p)
    p.add_argument(
        "--blocks",
        help="default: the collapse the report chose (see --report); N: the report's point with "
        "N blocks removed (no report: the first N in --criterion order); or block names, "
        "comma-separated",
    )
    p.add_argument(
        "--report",
        help="the report.json (or its folder) whose choice to export, with its repair (default: "
        "the run's report.json or collapse/report.json beside the checkpoint, when made from it; "
        "'none': choose afresh)",
    )
    add_options(p, CollapseConfig, EXPORT_OPTIONS)
    p.add_argument("--format", choices=FORMATS, default="pt", help="file format (hf: a "
                   "save_pretrained folder with the tokenizer, for --model hf:...)")  # fmt: skip
    p.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold batch norm into the layer before it (default: on for torchscript and onnx)",
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="torchscript only: write the module frozen and time it as deployed after "
        "torch.jit.optimize_for_inference(torch.jit.load(OUTPUT)) (faster at large batches on CPU)",
    )
    p.add_argument(
        "--embed-normalization",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torchscript and onnx: the model's first layer normalises its input, which is then "
        "pixel / 255 (default: on; off: the caller normalises, as OUTPUT.json says)",
    )
    p.add_argument("--output", required=True, help="file to write (and OUTPUT.json beside it)")
    p.add_argument("--no-progress", action="store_true", help="print no progress lines")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUTPUT and OUTPUT.json"
    )
    p.set_defaults(func=cmd_export)

    _run_parser(
        sub, "run", cmd_run, True, help="the main job: train with LaCoOT, collapse and report",
        description="Train with LaCoOT on the embedded default (Fashion-MNIST, resnet20) unless "
        "told otherwise, then sweep, choose a collapse within the budget and report.",
    )  # fmt: skip

    p = sub.add_parser("models", help="list the zoo's models")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lacoot`` command; returns its exit code."""
    warnings.formatwarning = _one_line_warning
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`lacoot models | head -3`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        code = EXIT_BROKEN_PIPE
    if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):  # a torchrun worker
        # Every file is written and closed. Skip interpreter finalisation, where gloo's worker
        # threads can abort a finished process (SIGABRT, "terminate called without an active
        # exception") and turn a successful run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _one_line_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> str:
    return f"lacoot: warning: {message}\n"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in given  # accepted anywhere on the line
    args = parser.parse_args([a for a in given if a != "--debug"])
    if args.command not in ("train", "run") and os.environ.get("WORLD_SIZE", "1") != "1":
        print(
            f"lacoot: error: `lacoot {args.command}` runs in one process; only train and run "
            "are distributed: start it without torchrun",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    from .config import BUDGETS

    if args.command == "collapse" and all(getattr(args, b) is None for b in BUDGETS):
        parser.error("collapse needs a budget: --max-drop, --max-macs, --max-latency or --blocks")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        parser.error("--resume and --overwrite: expected one of them")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise
    except BaseException as exc:
        if debug:
            raise
        code, message = _failure(exc)
        if code is None:
            raise
        if message:
            print(message, file=sys.stderr)
        return code


def _failure(exc: BaseException) -> tuple[int | None, str]:
    """The exit code and the one line of an exception a user can act on; (None, "") for a
    bug (its traceback is shown)."""
    from .distributed import env_rank
    from .train import TrainingInterrupted

    rank0 = env_rank() == 0
    if isinstance(exc, TrainingInterrupted):
        return 128 + exc.signum, f"lacoot: {exc}" if rank0 else ""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "lacoot: interrupted"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in OPTIONAL:
        package = OPTIONAL[(exc.name or "").split(".")[0]]
        return EXIT_BAD_INPUT, f"lacoot: error: this needs {package}: {INSTALL_CLI}"
    if isinstance(exc, FloatingPointError):
        return EXIT_BAD_INPUT, (
            f"lacoot: error: {exc}; the training diverged: lower --lr, or pass --grad-clip 1 "
            "or --nonfinite skip"
            if rank0
            else ""
        )
    if isinstance(exc, (ValueError, OSError)):
        return EXIT_BAD_INPUT, f"lacoot: error: {_flagged(str(exc))}" if rank0 else ""
    return None, ""


def _flagged(text: str) -> str:
    """``text`` with the options it names as their flags: ``lam=nan`` reads ``--lam nan``,
    ``val_fraction`` reads ``--val-fraction``."""
    from .config import RunConfig

    names = sorted({*RunConfig.__dataclass_fields__, "model_args"}, key=len, reverse=True)
    for name in names:
        flag = "--" + name.replace("_", "-")
        text = re.sub(rf"(?<![\w.'-]){name}=", flag + " ", text)
        if "_" in name:
            text = re.sub(rf"(?<![\w.'-]){name}(?![\w])", flag, text)
    return text


if __name__ == "__main__":
    sys.exit(main())
