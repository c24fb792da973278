"""torch's FLOP counter, completed with the operations it misses on some devices."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_attention_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    # The CPU kernel of scaled_dot_product_attention has no formula in torch's counter, so the
    # attention products would count on CUDA but not on CPU; count them as CUDA's kernels do.
    return sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """A silent :class:`FlopCounterMode` that also counts CPU flash attention."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_attention_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)
