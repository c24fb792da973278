"""lacoot: Layer Collapse through Optimal Transport.

Make a deep network shallower: train with a Max-Sliced Wasserstein penalty between every
collapsible block's input and output, rank the blocks by that distance, and remove the closest
ones without fine-tuning.
"""

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
from .criteria import list_criteria, register_criterion, score_blocks
from .export import load, save_model
from .metrics import negative_perplexity, token_accuracy, top1_accuracy
from .ot import max_sliced_wasserstein, sliced_wasserstein, wasserstein_1d
from .profile import count_macs, count_params, evaluate_accuracy, measure_latency
from .regularizer import MSWRegularizer
from .repair import REPAIRS, LinearPatch, linear_patch, recalibrate_bn
from .train import TrainConfig, train

__all__ = [
    "__version__",
    "Block",
    "BlockDiscoveryError",
    "CollapseError",
    "LinearPatch",
    "MSWRegularizer",
    "REPAIRS",
    "Sweep",
    "SweepPoint",
    "TrainConfig",
    "choose_blocks",
    "collapse",
    "count_macs",
    "count_params",
    "evaluate_accuracy",
    "find_blocks",
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
    "save_model",
    "score_blocks",
    "sliced_wasserstein",
    "sweep",
    "token_accuracy",
    "top1_accuracy",
    "train",
    "wasserstein_1d",
]
