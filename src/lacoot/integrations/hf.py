"""Hugging Face ``transformers`` models: what a collapse must keep so that the shallower model is
still a normal model of its library.

Registered with :mod:`lacoot.adapters` when imported (lacoot imports it once ``transformers`` is
imported). For a ``PreTrainedModel``:

* the layer lists of its decoder or encoder (an ``nn.ModuleList`` as long as a layer count of its
  config) always *delete* removed layers; after a deletion every ``layer_idx`` of the layers kept
  is renumbered (the cache is indexed by it), the config's layer count is rewritten
  (``num_hidden_layers``, which ``n_layer``/``num_layers`` alias), and every per-layer list of the
  config (``layer_types``, say) keeps the entries of the layers kept. ``generate()`` with any
  cache and ``save_pretrained``/``from_pretrained`` then behave as for a model built with fewer
  layers;
* outputs are compared on their tensors (logits, hidden states), never on cache objects;
* a small example input (two sequences of eight tokens, one left-padded) checks every removal when
  the user gives none;
* hidden states ``(B, T, D)`` are sequences of tokens: distances and criteria take each token as
  one sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..adapters import ModelAdapter, register_adapter

__all__ = ["HFAdapter", "layer_lists", "config_layer_count", "from_gguf"]

# config attributes that count layers (``n_layer`` and ``num_layers`` are aliases of
# ``num_hidden_layers`` in the configs that use them); the decoder's own count first for a
# container of a decoder
_COUNTS = ("num_hidden_layers", "num_decoder_layers")


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """The distinct configs of ``model`` and its sub-models (a composite model has several)."""
    seen: dict[int, PretrainedConfig] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            seen.setdefault(id(config), config)
            for key in ("text_config", "decoder", "encoder"):
                sub = getattr(config, key, None)
                if isinstance(sub, PretrainedConfig):
                    seen.setdefault(id(sub), sub)
    return list(seen.values())


def config_layer_count(model: nn.Module) -> set[int]:
    """The layer counts the configs of ``model`` state."""
    counts = set()
    for config in _configs(model):
        for key in _COUNTS:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                counts.add(value)
    return counts


# per-layer index attributes, as the libraries' attention modules and layers name them
_INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index")


def _is_layer(module: nn.Module) -> bool:
    """A transformer layer: it or a sub-module records its layer index, or its class is named as
    one."""
    name = type(module).__name__
    if name.endswith(("Layer", "Block")):
        return True
    return any(isinstance(getattr(m, a, None), int) for m in module.modules() for a in _INDEX_ATTRS)


def layer_lists(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.ModuleList`` s of ``model`` that hold its layers: as long as a
    layer count of its config, made of transformer layers."""
    counts = config_layer_count(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) in counts
        and len(module) > 0
        and all(_is_layer(m) for m in module)
    ]


def _renumber(container: nn.ModuleList, kept: Sequence[int]) -> None:
    """Every layer index inside the layer now at position ``j`` (it was at ``kept[j]``) moved by
    ``j - kept[j]`` (so a 1-based index stays 1-based)."""
    for j, layer in enumerate(container):
        for module in layer.modules():
            for attr in _INDEX_ATTRS:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(module, attr, value - kept[j] + j)


def _gpt_neo_sources(config: PretrainedConfig) -> None:
    # GPT-Neo derives ``attention_layers`` from run-length ``attention_types`` when it loads
    config.attention_types = [[[kind], 1] for kind in config.attention_layers]


# model_type -> rewrite of the config fields from which a loaded config derives a per-layer list
_DERIVED = {"gpt_neo": _gpt_neo_sources}


def _rewrite_config(config: PretrainedConfig, key: str, kept: Sequence[int], old: int) -> None:
    """``config.key`` set to ``len(kept)`` and every per-layer list (``old`` entries) cut to the
    entries of the layers kept; then checked to load back as it is (what ``from_pretrained`` of
    a saved collapse reads)."""
    setattr(config, key, len(kept))
    for attr, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == old and not attr.startswith("_"):
            setattr(config, attr, type(value)(value[i] for i in kept))
    derive = _DERIVED.get(getattr(config, "model_type", ""))
    if derive is not None:
        derive(config)
    _check_reloads(config)


def _check_reloads(config: PretrainedConfig) -> None:
    """Raise if ``config``, saved and loaded, states other layers than it does now."""
    try:
        loaded = type(config).from_dict(config.to_dict()).to_dict()
    except Exception as exc:
        raise RuntimeError(
            f"the rewritten {type(config).__name__} cannot be loaded back ({exc}); lacoot does "
            "not know how this architecture records its layers"
        ) from exc
    now = config.to_dict()
    differ = sorted(k for k in now if k in loaded and now[k] != loaded[k])
    if differ:
        raise RuntimeError(
            f"the rewritten {type(config).__name__} loads back with other {differ}; lacoot does "
            "not know how this architecture derives them"
        )


class HFAdapter(ModelAdapter):
    """:class:`lacoot.adapters.ModelAdapter` of ``transformers.PreTrainedModel``."""

    name = "transformers"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, PreTrainedModel)

    def example_input(self, model: nn.Module) -> dict[str, Tensor]:
        config = model.config.get_text_config()
        vocab = int(getattr(config, "vocab_size", 0) or 256)
        device = next(model.parameters()).device
        ids = (torch.arange(16, device=device).reshape(2, 8) * 7919 + 3) % vocab
        mask = torch.ones_like(ids)
        mask[0, :3] = 0  # one left-padded sequence: masks must survive a collapse too
        example = {"input_ids": ids, "attention_mask": mask}
        if getattr(model.config, "is_encoder_decoder", False):
            example["decoder_input_ids"] = ids[:, :4]
        return example

    def delete_in(self, model: nn.Module) -> set[str]:
        return set(layer_lists(model))

    def after_delete(
        self, model: nn.Module, container: str, kept: Sequence[int], old_len: int
    ) -> None:
        if container not in set(layer_lists_before(model, container, old_len)):
            return
        _renumber(model.get_submodule(container), kept)
        keys = _COUNTS[::-1] if "decoder" in container.split(".") else _COUNTS
        for config in _configs(model):
            key = next((k for k in keys if getattr(config, k, None) == old_len), None)
            if key is not None:
                _rewrite_config(config, key, kept, old_len)

    def comparable(self, output: Any) -> Any:
        if isinstance(output, Mapping):  # ModelOutput: an ordered dict of its set fields
            return {k: v for k, v in output.items() if _tensors_only(v)}
        if isinstance(output, tuple):
            return tuple(v for v in output if _tensors_only(v))
        return output

    def token_features(self, model: nn.Module, features: Tensor) -> bool:
        return features.dim() == 3


def layer_lists_before(model: nn.Module, container: str, old_len: int) -> list[str]:
    """:func:`layer_lists` as it was before ``container`` lost layers (its length was
    ``old_len``): the configs still state the old count."""
    module = model.get_submodule(container)
    counts = config_layer_count(model)
    if old_len in counts and isinstance(module, nn.ModuleList) and all(map(_is_layer, module)):
        return [container]
    return []


def _tensors_only(value: Any) -> bool:
    """A tensor, or a tuple/list of tensors (hidden states, attentions)."""
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, Tensor) for v in value)


register_adapter(HFAdapter())


def from_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
    """A GGUF file (``folder/name.gguf``) as a plain ``transformers`` causal LM in ``dtype``, and
    its tokenizer.

    ``transformers`` dequantises every tensor on load but keeps the model marked as quantised with
    GGUF, which ``save_pretrained`` refuses; the weights being plain tensors, the mark is removed
    here, so the model (and any collapse of it) saves and reloads as a normal model. Needs the
    ``gguf`` package.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist; expected a .gguf file")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False
    for config in _configs(model):
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    return model.eval(), tokenizer
