"""Where a ``--model`` value comes from: the zoo, or a library the user brings.

``resnet20`` names a zoo model (:mod:`lacoot.models`). A prefix names another source:

* ``hf:FOLDER`` (a ``save_pretrained`` folder) or ``hf:FILE.gguf``: a Hugging Face causal
  language model in float32 and its tokenizer (``transformers``);
* ``timm:NAME``: ``timm.create_model(NAME)``, freshly initialised;
* ``torchvision:NAME``: ``torchvision.models.NAME(weights=None)``, freshly initialised.

Each library is imported only when a value asks for it; a library that is missing or fails to
import is a one-line ``ValueError`` naming the flag, the value and the install line.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PREFIXES", "split_source", "canonical_model", "import_library", "build_library_model",
           "load_hf", "build_model"]  # fmt: skip

PREFIXES = ("hf", "timm", "torchvision")
INSTALL = {
    "hf": "pip install 'lacoot[hf]'",
    "timm": "pip install timm",
    "torchvision": "pip install torchvision (the build that matches your torch)",
}
_MODULE = {"hf": "transformers", "timm": "timm", "torchvision": "torchvision"}


def split_source(value: str) -> tuple[str, str]:
    """``("zoo", name)`` for a zoo name, else ``(prefix, rest)`` for ``prefix:rest``."""
    prefix, sep, rest = str(value).partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise ValueError(f"--model {value!r} names no {prefix} model; expected {prefix}:NAME")
        return prefix, rest
    return "zoo", str(value)


def canonical_model(value: str) -> str:
    """``value`` when it names a zoo model or carries a known prefix; else a ``ValueError``
    listing the zoo's names and the prefixes."""
    from .models import list_models

    kind, name = split_source(value)
    if kind == "zoo" and name not in list_models():
        raise ValueError(
            f"unknown model {value!r}; valid names: {', '.join(list_models())}, or "
            "hf:FOLDER, hf:FILE.gguf, timm:NAME, torchvision:NAME"
        )
    return value


def import_library(prefix: str, value: str) -> Any:
    """The library of ``prefix``, imported; any failure to import it (missing, or a build that
    does not fit the installed torch and raises something else than ``ImportError``) is a
    one-line ``ValueError``."""
    module = _MODULE[prefix]
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken build raises RuntimeError, OSError...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"--model {value!r} needs {module}, which cannot be imported ({type(exc).__name__}: "
            f"{first}); install it: {INSTALL[prefix]}"
        ) from None


def build_library_model(
    value: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    """A freshly initialised ``timm:NAME`` or ``torchvision:NAME`` classifier of
    ``num_classes`` classes taking ``in_channels`` channels (``kwargs`` passed to the
    constructor); an unknown name or arguments it does not take are a ``ValueError``."""
    prefix, name = split_source(value)
    if prefix == "hf":
        raise ValueError(
            f"--model {value!r} is a language model: lacoot score, collapse and export take it "
            "with --dataset text; lacoot train and run take zoo, timm and torchvision models"
        )
    library = import_library(prefix, value)
    try:
        if prefix == "timm":
            return library.create_model(name, pretrained=False, num_classes=num_classes,
                                        in_chans=in_channels, **kwargs)  # fmt: skip
        if in_channels != 3:
            raise ValueError(
                f"--model {value!r} takes 3-channel images, the dataset has {in_channels}; "
                "expected an RGB dataset, or a timm model (timm adapts its first layer)"
            )
        factory = getattr(library.models, name, None)
        if not callable(factory) or name.startswith("_"):
            raise ValueError(f"--model {value!r}: torchvision.models has no model {name!r}; "
                             "expected a name such as resnet18 or vit_b_16")  # fmt: skip
        return factory(weights=None, num_classes=num_classes, **kwargs)
    except (RuntimeError, TypeError, KeyError) as exc:  # timm: unknown model is RuntimeError
        raise ValueError(f"--model {value!r} cannot be built ({exc}); expected a model name "
                         f"of {_MODULE[prefix]} and arguments it takes") from None  # fmt: skip


def load_hf(value: str) -> tuple[nn.Module, Any]:
    """The causal language model of ``hf:FOLDER`` or ``hf:FILE.gguf`` in float32, in eval
    mode, and its tokenizer."""
    _, where = split_source(value)
    path = Path(where)
    import_library("hf", value)
    if path.suffix.lower() == ".gguf":
        from .integrations.hf import from_gguf

        if not path.is_file():
            raise ValueError(f"--model {value!r}: no such GGUF file")
        return from_gguf(path, dtype=torch.float32)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {value!r}: {str(path)!r} is not a save_pretrained folder (no "
                         "config.json); expected hf:FOLDER or hf:FILE.gguf")  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lacoot.integrations.hf  # noqa: F401 - the adapter, before any block is found

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), tokenizer


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"name", "num_classes", "in_channels", "kwargs"}``: a zoo model, or a
    timm/torchvision one; arguments the model does not take are a ``ValueError`` naming them.
    With ``spec["shallow"]`` (a list of ``{"removed", "patched", "deleted_from"}``, what model
    files of ``lacoot export`` record, oldest first) the model is built without those blocks, as
    it was collapsed: a training started from a collapsed model (``--init shallow.pt``) keeps its
    architecture."""
    from .models import create

    kwargs = spec.get("kwargs", {})
    if split_source(spec["name"])[0] != "zoo":
        model = build_library_model(spec["name"], spec["num_classes"], spec["in_channels"], kwargs)
    else:
        try:
            model = create(spec["name"], num_classes=spec["num_classes"],
                           in_channels=spec["in_channels"], **kwargs)  # fmt: skip
        except TypeError as exc:
            if not kwargs:
                raise
            found = re.match(r"(\w+)\.__init__\(\)", str(exc))
            where = (f"lacoot.models.{found[1]}" if found
                     else f"lacoot.models.create({spec['name']!r})")  # fmt: skip
            raise ValueError(
                f"model_args={kwargs!r} do not fit model {spec['name']!r} ({exc}); expected the "
                f'keyword arguments of {where}, e.g. python -c "import lacoot.models as m; '
                f'help(m.{found[1] if found else "create"})"'
            ) from None
    if spec.get("shallow"):
        from .export import rebuild_collapsed

        for shape in spec["shallow"]:
            model = rebuild_collapsed(model, shape)
    return model
