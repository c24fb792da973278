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
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import __version__

EXIT_BAD_INPUT = 2

_HELP = {
    "model": "zoo model name (see `lacoot models`)",
    "model_args": "extra model constructor argument KEY=VALUE (repeatable), e.g. stem=imagenet",
    "dataset": "fashion-mnist, mnist, cifar10, cifar100, tiny-imagenet or imagefolder",
    "data_dir": "folder of the dataset files (default: $LACOOT_DATA, then system folders)",
    "val_fraction": "fraction of the training set held out for validation and scoring",
    "batch_size": "training batch size",
    "augment": "random crop with padding and flips on the training batches",
    "device": "cpu, cuda, cuda:N or auto",
    "out": "output folder (checkpoint, logs, report)",
    "epochs": "training epochs",
    "lam": "weight lambda of the MSW penalty (0: vanilla training)",
    "optimizer": "sgd (momentum, nesterov) or adamw",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "weight decay",
    "schedule": "multistep, cosine, onecycle or constant",
    "milestones": "multistep: epochs at which lr is multiplied by gamma",
    "gamma": "multistep: lr factor",
    "seed": "random seed (recorded with the results)",
    "amp": "bfloat16 mixed precision on CUDA",
    "method": "MSW estimator during training: ascent or random",
    "n_projections": "random directions of the random estimator",
    "n_iters": "ascent steps per training step",
    "nonfinite": "on a non-finite loss: stop (keep the last checkpoint) or skip the batch",
    "global_msw": "under torchrun: compute the MSW penalty on the global batch (features of "
    "all processes gathered) instead of each process's own",
    "sync_bn": "under torchrun: batch-norm statistics over the global batch",
    "relative": "divide each block's MSW by its input's principal spread (scale-free penalty)",
    "penalize": "glob patterns of the blocks to penalise, e.g. 'layer*.2' (default: all blocks)",
    "target_blocks": "penalise only the K blocks ranked cheapest to remove after the warm-up",
    "target_macs": "penalise only the blocks whose removal brings the MACs to this fraction "
    "(1: no budget, every block penalised; yields to --penalize and --target-blocks)",
    "target_warmup": "epochs with every block penalised before target blocks are chosen",
    "target_criterion": "criterion that ranks the blocks when the targets are chosen",
    "criterion": "block order: msw, msw_rel, cosine, angular, greedy, random or depth",
    "compare": "other block orders measured for comparison",
    "max_drop": "largest validation-accuracy drop allowed, in percentage points (run: 1.0 when "
    "no other budget is given)",
    "max_macs": "largest MACs allowed, as a fraction of the full model's",
    "blocks": "remove exactly this many blocks",
    "repair": "training-free repair of each collapse: none, bn (re-estimated batch norm) or "
    "linear (least-squares 1x1 patches, then bn)",
    "calib_samples": "calibration images (validation split) of each repair",
    "latency_batch_sizes": "batch sizes at which latency is measured",
    "latency_repeats": "timed repeats per latency measurement (median reported)",
    "progress": "progress bars",
}
_TRAIN_KEYS = [
    "model", "model_args", "dataset", "data_dir", "val_fraction", "batch_size", "augment",
    "device", "out", "epochs", "lam", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
    "schedule", "milestones", "gamma", "seed", "amp", "method", "n_projections", "n_iters",
    "nonfinite", "global_msw", "sync_bn", "relative", "penalize", "target_blocks",
    "target_macs", "target_warmup", "target_criterion", "progress",
]  # fmt: skip
_COLLAPSE_KEYS = [
    "criterion", "compare", "max_drop", "max_macs", "blocks", "repair", "calib_samples",
    "latency_batch_sizes", "latency_repeats",
]  # fmt: skip


def _default(key: str) -> Any:
    """The default of a :class:`lacoot.pipeline.RunConfig` option."""
    from .pipeline import RunConfig

    f = RunConfig.__dataclass_fields__[key]
    return f.default_factory() if callable(f.default_factory) else f.default


def _parse_kv(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def _add_run_options(parser: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    """One option per RunConfig field; defaults are None so a config file can fill them."""
    from .pipeline import RunConfig

    types = {f.name: f for f in fields(RunConfig)}
    defaults = RunConfig.__dataclass_fields__
    for key in keys:
        f = types[key]
        flag = "--" + key.replace("_", "-")
        default = defaults[key].default
        if callable(defaults[key].default_factory):
            default = defaults[key].default_factory()
        help_text = f"{_HELP[key]} (default: {default})"
        if key == "model_args":
            parser.add_argument(flag, dest=key, type=_parse_kv, action="append", help=help_text)
        elif f.type == "bool":
            flag_action = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=key, action=flag_action, help=help_text)
        elif key in ("milestones", "latency_batch_sizes"):
            parser.add_argument(flag, dest=key, type=int, nargs="+", help=help_text)
        elif key in ("compare", "penalize"):
            parser.add_argument(flag, dest=key, nargs="*", help=help_text)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(
                f.type, str
            )
            parser.add_argument(flag, dest=key, type=kind, help=help_text)
        parser.set_defaults(**{key: None})


def _run_config(args: argparse.Namespace, keys: Sequence[str]):
    """Defaults < config file < command-line flags."""
    from .pipeline import RunConfig

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_config(Path(args.config)))
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = dict(value) if key == "model_args" else value
    return RunConfig.from_dict(values)


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

    cfg = _run_config(args, _TRAIN_KEYS)
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
    from ._io import atomic_write_text
    from .pipeline import run_scoring

    scores = run_scoring(args.checkpoint, args.criterion, args.device, args.data_dir, args.seed)
    if args.out:
        atomic_write_text(args.out, json.dumps(scores, indent=2))
    _print_json(scores)
    return 0


def cmd_collapse(args: argparse.Namespace) -> int:
    from .pipeline import run_collapse

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "collapse"
    report = run_collapse(
        args.checkpoint,
        out,
        criterion=args.criterion,
        compare=args.compare,
        max_drop=args.max_drop,
        max_macs=args.max_macs,
        blocks=args.blocks,
        device=args.device,
        data_dir=args.data_dir,
        seed=args.seed,
        latency_batch_sizes=args.latency_batch_sizes,
        latency_repeats=args.latency_repeats,
        overwrite=args.overwrite,
        repair=args.repair,
        calib_samples=args.calib_samples,
        progress=not args.no_progress,
    )
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
    import torch

    from .blocks import remove_blocks
    from .collapse import removal_order
    from .export import export_onnx, export_torchscript, save_model
    from .pipeline import calibration_data, model_from_checkpoint, run_scoring
    from .repair import repair
    from .train import load_checkpoint, resolve_device

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{str(output)!r} already exists; pass --overwrite to replace it")
    dev = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint, map_location=dev)
    model, blocks, spec = model_from_checkpoint(state, args.checkpoint, dev)
    names = [b.name for b in blocks]
    if args.blocks.isdigit():
        k = int(args.blocks)
        if k > len(blocks):
            raise ValueError(f"--blocks {k}, but the model has only {len(blocks)} blocks")
        scores = run_scoring(args.checkpoint, [args.criterion], args.device, args.data_dir)
        removed = removal_order(blocks, scores[args.criterion])[:k]
    else:
        removed = [n for n in args.blocks.split(",") if n]
        unknown = [n for n in removed if n not in names]
        if unknown:
            raise ValueError(f"blocks {unknown} are not collapsible; expected some of {names}")
    if args.repair == "none" or not removed:
        shallow = remove_blocks(model, removed).eval()
    else:
        _, calib, _ = calibration_data(spec, dev, args.data_dir, args.seed)
        shallow = repair(model, removed, calib, args.repair, args.calib_samples).eval()
    example = torch.zeros(1, *state["image_shape"], device=dev)
    if args.format == "pt":
        save_model(output, shallow, state["model_spec"], removed)
    elif args.format == "torchscript":
        export_torchscript(shallow, example, output)
    else:
        export_onnx(shallow, example, output)
        _check_onnx(shallow, example, output)
    print(f"exported {state['model_spec']['name']} without {removed} to {output} ({args.format})")
    return 0


def _check_onnx(model: Any, example: Any, path: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: the ONNX file was not checked")
        return
    import torch

    x = torch.randn(3, *example.shape[1:])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        want = model.cpu()(x)
    err = float((got - want).abs().max())
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise ValueError(f"ONNX output differs from torch's by {err:.3g}; file {path}")
    print(f"onnxruntime check: max abs difference {err:.2e}")


def cmd_run(args: argparse.Namespace) -> int:
    from ._io import atomic_write_text
    from .pipeline import run_all

    cfg = _run_config(args, _TRAIN_KEYS + _COLLAPSE_KEYS)
    out = Path(cfg.out)
    report = run_all(cfg, overwrite=args.overwrite, resume=args.resume)
    if report is None:  # not rank 0 under torchrun
        return 0
    import yaml

    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _summarise(report, out)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lacoot",
        description="Make deep networks shallower with LaCoOT (Layer Collapse through Optimal "
        "Transport): train with a Max-Sliced Wasserstein penalty, then remove blocks.",
    )
    parser.add_argument("--version", action="version", version=f"lacoot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def collapse_options(p: argparse.ArgumentParser) -> None:
        for key, kind in (("criterion", str), ("repair", str), ("calib_samples", int)):
            default = _default(key)
            p.add_argument("--" + key.replace("_", "-"), type=kind, default=default,
                           help=f"{_HELP[key]} (default: {default})")  # fmt: skip

    def checkpoint_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="checkpoint.pt written by lacoot train")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        p.add_argument("--data-dir", default=None, help="override the checkpoint's data folder")
        p.add_argument("--seed", type=int, default=0, help="seed of the scoring randomness")

    p = sub.add_parser("train", help="train a model with the LaCoOT penalty")
    p.add_argument("--config", help="YAML file of options (flags override it)")
    _add_run_options(p, _TRAIN_KEYS)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace results already in OUT")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score the blocks of a trained checkpoint")
    checkpoint_options(p)
    p.add_argument("--criterion", nargs="+", default=["msw"], help="one or more criteria")
    p.add_argument("--out", help="also write the scores to this JSON file")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("collapse", help="sweep, choose within a budget, report")
    checkpoint_options(p)
    budget = p.add_argument_group("budget (at least one)")
    budget.add_argument("--max-drop", type=float, help=_HELP["max_drop"])
    budget.add_argument("--max-macs", type=float, help=_HELP["max_macs"])
    budget.add_argument("--blocks", type=int, help=_HELP["blocks"])
    collapse_options(p)
    p.add_argument("--compare", nargs="*", default=_default("compare"), help=_HELP["compare"])
    p.add_argument("--no-progress", action="store_true", help="print no progress lines")
    p.add_argument("--latency-batch-sizes", type=int, nargs="+", default=[1, 128])
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--out", help="report folder (default: beside the checkpoint, collapse/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in OUT")
    p.set_defaults(func=cmd_collapse)

    p = sub.add_parser("export", help="write the physically shallower model")
    checkpoint_options(p)
    p.add_argument(
        "--blocks",
        required=True,
        help="how many blocks to remove (in --criterion order), or their names, comma-separated",
    )
    collapse_options(p)
    p.add_argument("--format", choices=["pt", "torchscript", "onnx"], default="pt")
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "run",
        help="the main job: train with LaCoOT, collapse and report",
        description="Train with LaCoOT on the embedded default (Fashion-MNIST, resnet20) unless "
        "told otherwise, then sweep, choose a collapse within the budget and report.",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    _add_run_options(p, _TRAIN_KEYS + _COLLAPSE_KEYS)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace results already in OUT")
    p.set_defaults(func=cmd_run)

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
    if args.command == "collapse" and args.max_drop is None and args.max_macs is None:
        if args.blocks is None:
            parser.error("collapse needs a budget: --max-drop, --max-macs or --blocks")
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
