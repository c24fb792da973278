"""lacoot: Layer Collapse through Optimal Transport.

Make a deep network shallower: train with a Max-Sliced Wasserstein penalty between every
collapsible block's input and output, rank the blocks by that distance, and remove the closest
ones without fine-tuning.

``lacoot.repair`` is both the module of the training-free repairs (``from lacoot.repair import
linear_patch``) and its main function: ``lacoot.repair(model, removed, loader, method="linear")``
calls :func:`lacoot.repair.repair`.
"""

import inspect as _inspect
import types as _types

from . import repair as _repair_module
from ._version import __version__
from .blocks import (
    Block,
    BlockDiscoveryError,
    CollapseError,
    find_blocks,
    identity_blocks,
    remove_blocks,
)
from .collapse import Sweep, SweepPoint, choose_blocks, collapse, removal_order, sweep
from .config import CollapseConfig, RunConfig
from .criteria import list_criteria, register_criterion, score_blocks
from .export import load, save_model
from .fuse import fused_linear
from .metrics import negative_perplexity, token_accuracy, top1_accuracy
from .ot import max_sliced_wasserstein, sliced_wasserstein, wasserstein_1d
from .pipeline import run_all
from .profile import count_macs, count_params, evaluate_accuracy, measure_latency
from .regularizer import MSWRegularizer
from .repair import REPAIRS, LinearPatch, linear_patch, recalibrate_bn
from .train import TrainConfig, train
from .windows import best_window, window_distances

__all__ = [
    "Block",
    "BlockDiscoveryError",
    "CollapseConfig",
    "CollapseError",
    "LinearPatch",
    "MSWRegularizer",
    "REPAIRS",
    "RunConfig",
    "Sweep",
    "SweepPoint",
    "TrainConfig",
    "__version__",
    "best_window",
    "choose_blocks",
    "collapse",
    "count_macs",
    "count_params",
    "evaluate_accuracy",
    "find_blocks",
    "fused_linear",
    "identity_blocks",
    "linear_patch",
    "list_criteria",
    "load",
    "max_sliced_wasserstein",
    "measure_latency",
    "negative_perplexity",
    "recalibrate_bn",
    "register_criterion",
    "removal_order",
    "remove_blocks",
    "repair",
    "run_all",
    "save_model",
    "score_blocks",
    "sliced_wasserstein",
    "sweep",
    "token_accuracy",
    "top1_accuracy",
    "train",
    "wasserstein_1d",
    "window_distances",
]


class _CallableModule(_types.ModuleType):
    """A module that is also its main function (``module.<name of the module>``)."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


_repair_module.__class__ = _CallableModule
_repair_module.__signature__ = _inspect.signature(_repair_module.repair)  # type: ignore[attr-defined]
repair = _repair_module
