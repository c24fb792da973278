"""The ``lacoot`` command: thin subcommands over :mod:`lacoot.pipeline`.

Exit codes: 0 success, 2 bad input (unknown names, bad values, unreadable or mismatched files,
impossible budgets), 128 + the signal number when training was stopped by SIGINT (130) or SIGTERM
(143) after writing a checkpoint, 130 on any other interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from ._version import __version__

EXIT_BAD_INPUT = 2


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
    from .config import base_type, default_of

    for f in _fields(cls, keys):
        flag, kind = "--" + f.name.replace("_", "-"), base_type(f)
        common = {"dest": f.name, "help": _help(f, default_of(f))}
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
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def _run_config(args: argparse.Namespace) -> Any:
    """Defaults < config file < command-line flags."""
    from .config import RunConfig

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_config(Path(args.config)))
    return RunConfig.from_dict(values | _given(args, RunConfig))


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


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
    print(
        f"trained {cfg.model} on {cfg.dataset} for {cfg.epochs} epochs (lambda = {cfg.lam}); "
        f"val accuracy {last.get('val_accuracy', float('nan')):.2f}%; checkpoint {ckpt}"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .pipeline import run_scoring

    _print_json(run_scoring(args.checkpoint, args.criterion, args.device, args.data_dir,
                            args.seed, out=args.out))  # fmt: skip
    return 0


EXPORT_OPTIONS = ("criterion", "repair", "calib_samples")  # the collapse options of export


def _collapse_config(args: argparse.Namespace, keys: Sequence[str] | None = None) -> Any:
    from .config import CollapseConfig

    given = _given(args, CollapseConfig)
    return CollapseConfig.from_dict({k: v for k, v in given.items() if keys is None or k in keys})


def cmd_collapse(args: argparse.Namespace) -> int:
    from .pipeline import run_collapse

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "collapse"
    report = run_collapse(
        args.checkpoint, out, _collapse_config(args), device=args.device,
        data_dir=args.data_dir, seed=args.seed, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    _summarise(report, out)
    return 0


def _summarise(report: dict[str, Any], out: Path) -> None:
    chosen = report["chosen"]
    full = report["sweeps"][report["criterion"]]["points"][0]
    print(
        f"removed {chosen['k']} blocks {chosen['removed']}: test accuracy "
        f"{full['test_accuracy']:.2f}% -> {chosen['test_accuracy']:.2f}%, MACs "
        f"{full['macs'] / 1e6:.2f} M -> {chosen['macs'] / 1e6:.2f} M "
        f"(repair {report['repair']['method']!r}; without it "
        f"{chosen['unrepaired']['test_accuracy']:.2f}%); report in {out}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from .pipeline import run_export

    blocks = int(args.blocks) if args.blocks.isdigit() else [n for n in args.blocks.split(",") if n]
    done = run_export(
        args.checkpoint, args.output, blocks, args.format, _collapse_config(args, EXPORT_OPTIONS),
        device=args.device, data_dir=args.data_dir, seed=args.seed, overwrite=args.overwrite,
        fold_bn=args.fold_bn, optimize=args.optimize,
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
    print(
        f"exported the model without {done['removed']} to {done['path']} ({done['format']}"
        + (", batch norm folded" if done["folded_bn"] else "")
        + (", frozen" if done["optimized"] else "")
        + f"): {done['macs'] / 1e6:.2f} M MACs per sample, {done['params'] / 1e6:.3f} M "
        f"parameters, {done['latency_ms']:.2f} ms per sample (batch 1, {timed})"
    )
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
    p.add_argument("checkpoint", help="checkpoint.pt written by lacoot train")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None, help="override the checkpoint's data folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the scoring randomness")


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub, "train", cmd_train, False, help="train a model with the LaCoOT penalty")

    p = sub.add_parser("score", help="score the blocks of a trained checkpoint")
    _checkpoint_options(p)
    p.add_argument("--criterion", nargs="+", default=["msw"], help="one or more criteria")
    p.add_argument("--out", help="also write the scores to this JSON file")
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
        required=True,
        help="how many blocks to remove (in --criterion order), or their names, comma-separated",
    )
    add_options(p, CollapseConfig, EXPORT_OPTIONS)
    p.add_argument("--format", choices=FORMATS, default="pt", help="file format")
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
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT file")
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
    code = _main(argv)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):  # a torchrun worker
        # Every file is written and closed. Skip interpreter finalisation, where gloo's worker
        # threads can abort a finished process (SIGABRT, "terminate called without an active
        # exception") and turn a successful run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    from .train import TrainingInterrupted

    try:
        return int(args.func(args))
    except TrainingInterrupted as exc:
        from .distributed import env_rank

        if env_rank() == 0:
            print(f"lacoot: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("lacoot: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"lacoot: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
