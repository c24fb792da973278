"""Speed and value of lacoot's Max-Sliced Wasserstein estimators against POT.

Measured side by side in one run, on the same synthetic block input/output features
``X, Y: (n, d)`` float32 (torch tensors into both libraries):

(a) ``max_sliced_wasserstein(method="random")`` vs ``ot.max_sliced_wasserstein_distance``, both
    given the SAME explicit 50 projections (equal values expected, only speed differs);
(b) ``max_sliced_wasserstein(method="ascent")`` with its default arguments, with the training
    configuration of ``MSWRegularizer`` (``n_starts=0, n_ascend=1, n_iters=2``) started cold,
    and with the training configuration warm-started (``init=`` the direction left by a few
    previous training-configuration calls on slightly perturbed data, as in a training loop),
    vs POT with ``n_projections=50, seed=seed``
    (POT draws its own projections on every call, as the paper's code does).

Synthetic features (what a residual block sees, scaled down to a known structure):

* input ``X = relu(Z B + 0.5 E) * s + b``: ``Z ~ N(0, I_32)`` latent factors of the batch,
  ``B (32, d) ~ N(0, 1/32)``, noise ``E ~ N(0, 1)``, per-channel scales ``s ~ U(0.5, 1.5)`` and
  biases ``b ~ N(0, 0.1)``: correlated, non-negative, non-Gaussian;
* output ``Y = X + std(X) * (0.1 * sum_k c_k tanh(z_k) u_k + 0.05 * tanh(Z W) Q)``: the input
  plus a small residual, a deterministic function of the batch (no independent noise, whose
  sample mean alone would dominate the max-sliced distance when n << d). ``u_k`` are K = 4 fixed
  orthonormal directions, ``z_k`` the batch-standardised ``X u_k``, ``c = (1, .5, .25, .125)``:
  a monotone, odd change of the spread along the ``u_k``; ``W (32, 32) ~ N(0, 1/32)`` and
  ``Q (32, d)`` with orthonormal rows: a dense low-rank part of unit scale per direction.

The residual has about zero mean over the batch, so the difference of the means (one of the
ascent's starts) is not already the answer.

The max-sliced distance is then dominated by a few directions, which random projections almost
never hit in high dimension while the ascent can find them. A "reference" value (the largest of
all values and of an untimed ascent with many starts and steps) is reported as the best lower
bound known for the true maximum.

Timing: ``--warmup`` untimed calls of every variant, then ``--repeats`` rounds in which every
variant is called once, in an order rotated each round (so drift of the machine affects all
variants alike); each call is timed with ``time.perf_counter`` (the device is synchronised around
it on CUDA). Reported: median and IQR (25th-75th percentile) and std of ms per call.

Usage::

    python benchmarks/msw_speed.py [--sizes 128x4096,128x16384,128x65536] [--repeats 20]
        [--warmup 3] [--seed 0] [--out docs/benchmarks/msw_speed] [--device cpu]

writes ``<out>.json`` and ``<out>.md`` (atomically).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ot
import torch
from _common import cpu_model, loadavg

from lacoot._io import atomic_write_text
from lacoot.ot import max_sliced_wasserstein, random_projections

N_PROJ = 50
# MSWRegularizer's search once it has a warm start (lacoot.regularizer)
TRAINING = {"n_starts": 0, "n_ascend": 1, "n_iters": 2}


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def synthetic_block_features(
    n: int, d: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, Callable[[float, int], tuple[torch.Tensor, torch.Tensor]]]:
    """``X, Y`` float32 ``(n, d)`` as described in the module docstring, and a function
    ``perturbed(scale, k)`` giving the k-th slightly different batch (same structure, the latent
    factors moved by ``scale`` relative noise): the "previous training steps"."""
    g = torch.Generator().manual_seed(seed)
    r, K = 32, 4
    B = torch.randn(r, d, generator=g) / math.sqrt(r)
    s = torch.rand(d, generator=g) + 0.5
    b = 0.1 * torch.randn(d, generator=g)
    U = torch.linalg.qr(torch.randn(d, K, generator=g)).Q  # (d, K) orthonormal residual directions
    c = torch.tensor([1.0, 0.5, 0.25, 0.125])
    W = torch.randn(r, r, generator=g) / math.sqrt(r)
    Q = torch.linalg.qr(torch.randn(d, r, generator=g)).Q.T  # (r, d) orthonormal rows
    Z0 = torch.randn(n, r, generator=g)
    E0 = torch.randn(n, d, generator=g)

    def make(Z: torch.Tensor, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.relu(Z @ B + 0.5 * E) * s + b
        scale = float(X.std())
        proj = X @ U
        proj = (proj - proj.mean(dim=0)) / proj.std(dim=0)  # standardised over the batch
        structured = (c * torch.tanh(proj)) @ U.T  # monotone, odd: spread change along the u_k
        dense = torch.tanh(Z @ W) @ Q  # low-rank, unit-scale along at most r directions
        Y = X + scale * (0.1 * structured + 0.05 * dense)
        return X.contiguous().to(device), Y.contiguous().to(device)

    def perturbed(scale: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        gk = torch.Generator().manual_seed(seed * 1000 + 17 + k)
        Z = Z0 + scale * torch.randn(n, r, generator=gk)
        E = E0 + scale * torch.randn(n, d, generator=gk)
        return make(Z, E)

    X, Y = make(Z0, E0)
    return X, Y, perturbed


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """ms per call of every variant (interleaved, rotated order) and the value of its last call."""
    names = list(fns)
    values: dict[str, float] = {}
    for _ in range(warmup):
        for name in names:
            values[name] = float(fns[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            out = fns[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
            values[name] = float(out)
    return times, values


def summary(ts: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return {
        "median_ms": statistics.median(ts),
        "q25_ms": q[0],
        "q75_ms": q[2],
        "iqr_ms": q[2] - q[0],
        "mean_ms": statistics.fmean(ts),
        "std_ms": statistics.stdev(ts) if len(ts) > 1 else 0.0,
        "min_ms": min(ts),
        "repeats": len(ts),
    }


# ------------------------------------------------------------------------------------------------
# one size
# ------------------------------------------------------------------------------------------------


def bench_size(n: int, d: int, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    X, Y, perturbed = synthetic_block_features(n, d, args.seed, device)
    P = random_projections(d, N_PROJ, seed=args.seed, device=device)  # (d, 50) float32

    # Warm start as in training: a chain of training-configuration calls on the previous batches
    # (slightly perturbed data), the first one cold; its last direction is the init.
    init = None
    for k in range(args.warm_steps):
        Xk, Yk = perturbed(args.perturb, k)
        _, init = max_sliced_wasserstein(
            Xk,
            Yk,
            method="ascent",
            init=init,
            **TRAINING,
            return_direction=True,
        )
        del Xk, Yk

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "random (ours, 50 fixed proj.)": lambda: max_sliced_wasserstein(
            X, Y, projections=P, method="random"
        ),
        "POT (50 fixed proj.)": lambda: ot.max_sliced_wasserstein_distance(X, Y, projections=P),
        "ascent (ours, defaults)": lambda: max_sliced_wasserstein(
            X, Y, method="ascent", seed=args.seed
        ),
        "ascent (ours, training config, cold)": lambda: max_sliced_wasserstein(
            X, Y, method="ascent", **TRAINING
        ),
        "ascent (ours, training config, warm init)": lambda: max_sliced_wasserstein(
            X, Y, method="ascent", init=init, **TRAINING
        ),
        "POT (n_projections=50, seed)": lambda: ot.max_sliced_wasserstein_distance(
            X, Y, n_projections=N_PROJ, seed=args.seed
        ),
    }
    with torch.no_grad():
        times, values = time_variants(fns, args.repeats, args.warmup, device)
        reference_run = float(
            max_sliced_wasserstein(
                X, Y, method="ascent", seed=args.seed + 1, n_starts=256, n_ascend=16, n_iters=100
            )
        )
    # Every value is W_p on some unit direction, a lower bound of the true MSW: the best known.
    reference = max(reference_run, *values.values())
    stats = {name: summary(ts) for name, ts in times.items()}

    pot_fixed = stats["POT (50 fixed proj.)"]["median_ms"]
    pot_seed = stats["POT (n_projections=50, seed)"]["median_ms"]
    v_pot_seed = values["POT (n_projections=50, seed)"]
    rows = []
    for name in fns:
        st = stats[name]
        row: dict[str, object] = {
            "variant": name,
            **st,
            "value": values[name],
            "value_over_reference": values[name] / reference,
        }
        if name.startswith("random"):
            row["baseline"] = "POT (50 fixed proj.)"
            row["ratio_time"] = st["median_ms"] / pot_fixed
            row["value_rel_diff"] = abs(values[name] - values["POT (50 fixed proj.)"]) / abs(
                values["POT (50 fixed proj.)"]
            )
            row["target"] = "time <= POT's at equal projections"
            row["target_met"] = bool(st["median_ms"] <= pot_fixed)
        elif name.startswith("ascent"):
            row["baseline"] = "POT (n_projections=50, seed)"
            row["ratio_time"] = st["median_ms"] / pot_seed
            row["value_over_pot"] = values[name] / v_pot_seed
            row["target"] = "value >= POT-50's and time <= 0.5 x POT-50's"
            row["target_met"] = bool(
                values[name] >= v_pot_seed and st["median_ms"] <= 0.5 * pot_seed
            )
        rows.append(row)
    return {
        "n": n,
        "d": d,
        "reference_value": reference,
        "reference_run_value": reference_run,
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


def to_markdown(result: dict[str, object]) -> str:
    meta = result["meta"]
    lines = [
        "# Max-Sliced Wasserstein: speed and value, lacoot vs POT",
        "",
        f"Generated by `python {' '.join(meta['argv'])}` on {meta['date']}.",
        "",
        f"- Machine: {meta['machine']['cpu_model']} ({meta['machine']['machine']}), "
        f"{meta['machine']['cpu_count']} CPUs, {meta['machine']['platform']}; "
        f"device `{meta['device']}`, torch threads {meta['torch_threads']}",
        f"- torch {meta['torch']}, POT {meta['pot']}, Python {meta['python']}; seed {meta['seed']}",
        f"- {meta['repeats']} timed calls per variant after {meta['warmup']} warm-up calls, "
        "interleaved; times are ms per call, median [IQR 25th-75th percentile] (std).",
        "- Data: float32 synthetic block features, `X = relu(Z B + 0.5 E) * s + b` (rank-32 "
        "latent plus noise), `Y = X + std(X) * (0.1 * spread change along 4 fixed directions + "
        "0.05 * dense rank-32 term)`, a deterministic residual (see the script's docstring).",
        f"- Load average (1 min) before / after the run: {meta['loadavg_before']} / "
        f"{meta['loadavg_after']} (other processes on the machine inflate and spread the times).",
        "- `reference` = the largest of all values below and of an untimed ascent with "
        "n_starts=256, n_ascend=16, n_iters=100: every value is W_2 on a unit direction, so this "
        "is the best lower bound known for the true MSW; `value/ref` compares each estimate "
        "with it.",
        f"- Warm init: the direction after {meta['warm_steps']} training-configuration calls "
        f"(the first cold) on batches perturbed by {meta['perturb']} relative noise.",
        "",
        "Targets: (a) `random` no slower than POT at equal projections; "
        "(b) `ascent` at least POT-50's value in at most half of POT-50's time.",
        "",
    ]
    for size in result["sizes"]:
        lines += [
            f"## n = {size['n']}, d = {size['d']}  (reference value {size['reference_value']:.6g})",
            "",
            "| variant | time ms, median [IQR] (std) | time / baseline | value | value/ref "
            "| target met? |",
            "|---|---|---|---|---|---|",
        ]
        for row in size["rows"]:
            t = (
                f"{row['median_ms']:.2f} [{row['q25_ms']:.2f}-{row['q75_ms']:.2f}] "
                f"({row['std_ms']:.2f})"
            )
            ratio = f"{row['ratio_time']:.2f}" if "ratio_time" in row else "(baseline)"
            if "target_met" in row:
                met = "**yes**" if row["target_met"] else "**no**"
                if row["variant"].startswith("random"):
                    met += f" (value rel. diff vs POT {row['value_rel_diff']:.1e})"
                else:
                    met += f" (value/POT-50 {row['value_over_pot']:.2f})"
            else:
                met = ""
            lines.append(
                f"| {row['variant']} | {t} | {ratio} | {row['value']:.6g} | "
                f"{row['value_over_reference']:.3f} | {met} |"
            )
        lines.append("")
    lines += [
        "`time / baseline`: median over median; the baseline of `random` is POT with the same 50 "
        "projections, that of every `ascent` row is POT with `n_projections=50, seed`.",
        "",
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        n, _, d = item.strip().lower().partition("x")
        sizes.append((int(n), int(d)))
    return sizes


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128x4096,128x16384,128x65536", help="NxD,NxD,...")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/msw_speed", help="path without suffix")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-steps", type=int, default=5, help="calls before the warm start")
    parser.add_argument("--perturb", type=float, default=0.05, help="relative batch perturbation")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.warm_steps < 1:
        parser.error("need --repeats >= 1, --warmup >= 0 and --warm-steps >= 1")
    device = torch.device(args.device)

    loadavg_before = loadavg()
    sizes = []
    for n, d in parse_sizes(args.sizes):
        print(f"n={n} d={d} ...", file=sys.stderr, flush=True)
        sizes.append(bench_size(n, d, args, device))

    uname = platform.uname()
    result = {
        "meta": {
            "argv": list(sys.argv) if argv is None else [sys.argv[0], *argv],
            "python_executable": sys.executable,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": args.seed,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "warm_steps": args.warm_steps,
            "perturb": args.perturb,
            "device": str(device),
            "torch": torch.__version__,
            "pot": ot.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg(),
            "machine": {
                "platform": platform.platform(),
                "machine": uname.machine,
                "processor": uname.processor,
                "cpu_model": cpu_model(),
                "node": uname.node,
                "cpu_count": os.cpu_count(),
                "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            },
        },
        "sizes": sizes,
    }
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    return result


if __name__ == "__main__":
    main()
