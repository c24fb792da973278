"""The collapse a report chose, read back: what ``lacoot export`` writes by default.

``lacoot run`` and ``lacoot collapse`` write ``report.json``: the sweep of every order, the
point the budget chose, the repair and its calibration size. An export that follows the report
removes the same blocks with the same repair, so the exported model computes the function the
report measured; :func:`find_report` finds the report of a checkpoint and :func:`choice` reads
the blocks and the repair out of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CollapseConfig

__all__ = ["REPORT_PLACES", "ReportChoice", "find_report", "choice"]

REPORT_PLACES = ("report.json", "collapse/report.json")  # beside a checkpoint: run, collapse
CHOICE_OPTIONS = ("criterion", "repair", "calib_samples")  # what the report fixes


@dataclass
class ReportChoice:
    """The blocks a report's point removes (``removed``, original names), the options that
    repair them as the report did, the point's ``k`` and the report's path."""

    removed: list[str]
    options: CollapseConfig
    k: int
    path: str


def _read(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"report {str(path)!r} cannot be read as JSON ({err})") from None
    if not isinstance(report, dict) or "chosen" not in report or "sweeps" not in report:
        raise ValueError(f"{str(path)!r} is not a collapse report (report.json of lacoot run or "
                         "lacoot collapse): it has no 'chosen' point and 'sweeps'")  # fmt: skip
    return report


def _made_from(report: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether ``report`` was made from the checkpoint whose contents are ``state``: the same
    training history (a checkpoint trained on after the report has a longer one)."""

    def text(history: Any) -> str:  # compared as JSON: a NaN equals itself there
        return json.dumps(history, sort_keys=True)

    return text(report.get("train_history")) == text(state.get("history"))


def find_report(
    source: Any, state: dict[str, Any], report: str | os.PathLike | bool | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The collapse report an export follows.

    ``report`` is a ``report.json`` or the folder holding it; ``False``: none; ``None``: the
    first of :data:`REPORT_PLACES` beside the checkpoint ``source`` (whose contents are
    ``state``) that was made from it, or ``None``. A report named by ``report`` that was made from
    another training of the checkpoint is a ``ValueError``."""
    if report is False:
        return None
    if report is not None and report is not True:
        path = Path(report)
        path = path / "report.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(
                f"--report {str(report)!r} does not exist; expected a report.json of lacoot run "
                "or lacoot collapse, or the folder holding one"
            )
        found = _read(path)
        if state and not _made_from(found, state):
            raise ValueError(
                f"report {str(path)!r} was not made from {str(source)!r} (their training "
                "histories differ: trained on since?); expected its own report: collapse again"
            )
        return path, found
    if not state or not isinstance(source, (str, os.PathLike)):
        return None
    for place in REPORT_PLACES:
        path = Path(source).parent / place
        if path.is_file():
            found = _read(path)
            if _made_from(found, state):
                return path, found
    return None


def choice(
    path: Path, report: dict[str, Any], k: int | None, options: CollapseConfig | None
) -> ReportChoice:
    """The report's chosen point (``k`` None) or its ``k``-th point in the order it chose by,
    with the report's repair. ``options`` given (not ``None``) must agree with the report on
    :data:`CHOICE_OPTIONS`: a ``ValueError`` names the first that differs."""
    rep = report["repair"]
    fixed = {"criterion": report["criterion"], "repair": rep["method"],
             "calib_samples": rep["calib_samples"] or CollapseConfig.calib_samples}  # fmt: skip
    base = options or CollapseConfig()
    if options is not None:
        for key in CHOICE_OPTIONS:
            mine = getattr(options, key)
            if key == "calib_samples" and fixed["repair"] == "none":
                continue
            if mine != fixed[key]:
                flag = "--" + key.replace("_", "-")
                raise ValueError(
                    f"{flag} {mine!r}, but the report {str(path)!r} chose with {key} "
                    f"{fixed[key]!r}; expected no {flag} (the report's is used), or --report none "
                    "to choose afresh"
                )
    opts = CollapseConfig.from_dict({**base.to_dict(), **fixed})
    if k is None:
        point = report["chosen"]
    else:
        points = report["sweeps"][report["criterion"]]["points"]
        if not 0 <= k < len(points):
            raise ValueError(f"--blocks {k}, but the report {str(path)!r} swept k = 0.."
                             f"{len(points) - 1}")  # fmt: skip
        point = points[k]
    return ReportChoice(removed=list(point["removed"]), options=opts, k=int(point["k"]),
                        path=str(path))  # fmt: skip
