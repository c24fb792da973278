"""What a model's library asks of a collapse: one registry of model adapters.

Generic code (block discovery, removal, scoring, repair) never names an outside library. It asks
:func:`adapter_for` about a model, and gets the :class:`ModelAdapter` that an integration
(:mod:`lacoot.integrations`) registered for it, or the default, which asks nothing special.

An adapter says

* which containers hold layers that must be *deleted* when removed, never replaced by a stand-in
  (a decoder's layer list, whose length the library's cache and config count on), and what to
  rewrite after a deletion (per-layer indices, layer counts in the config);
* what of a model's output a comparison looks at (logits and hidden states, never a cache object);
* a small example input when the user gives none (to check every removal on it);
* what one *sample* of a block's features is: a whole sample (images) or a token (sequences), for
  the distances and criteria.

This module imports nothing of lacoot; integrations import it to register themselves.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["ModelAdapter", "register_adapter", "adapter_for", "AUTOLOAD"]

# outside library (its top-level module) -> the lacoot integration that registers its adapters;
# an integration is imported only once its library has been imported by the user's code
AUTOLOAD: dict[str, str] = {"transformers": "lacoot.integrations.hf"}


class ModelAdapter:
    """The default adapter: plain PyTorch, nothing special. Integrations subclass it."""

    name = "torch"

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter speaks for ``model``."""
        return True

    def example_input(self, model: nn.Module) -> Any:
        """A small batch to run ``model`` on when the user gives none (None: no such batch)."""
        return None

    def delete_in(self, model: nn.Module) -> set[str]:
        """Containers (qualified names) whose removed layers must be deleted and renumbered, never
        left as stand-ins."""
        return set()

    def after_delete(self, model: nn.Module, container: str, kept: Sequence[int], old_len: int):
        """Rewrite what ``model`` records about the layers of ``container`` after a deletion:
        ``kept[j]`` is the old index of the layer now at index ``j``; there were ``old_len``."""

    def comparable(self, output: Any) -> Any:
        """The part of a model output that two functions must agree on."""
        return output

    def token_features(self, model: nn.Module, features: Tensor) -> bool:
        """Whether rows of ``features: (B, T, D)`` are tokens (each token one sample of the
        distances and criteria) rather than one flattened sample per batch row."""
        return False


_ADAPTERS: list[ModelAdapter] = []
_DEFAULT = ModelAdapter()


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add ``adapter`` (asked before those registered earlier)."""
    _ADAPTERS.insert(0, adapter)
    return adapter


def _autoload() -> None:
    for library, integration in AUTOLOAD.items():
        if library in sys.modules and integration not in sys.modules:
            importlib.import_module(integration)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The registered adapter that speaks for ``model``, or the default one."""
    _autoload()
    for adapter in _ADAPTERS:
        if adapter.matches(model):
            return adapter
    return _DEFAULT
