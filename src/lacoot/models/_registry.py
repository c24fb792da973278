"""Name -> constructor registry behind :func:`lacoot.models.create`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar, overload

from torch import nn

from ._layers import check_positive_int

__all__ = ["ModelFactory", "create", "list_models", "register_model"]

#: A model constructor: ``factory(num_classes=..., in_channels=..., **kwargs) -> nn.Module``.
ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


@overload
def register_model(fn: _F, *, name: str | None = None) -> _F: ...
@overload
def register_model(fn: None = None, *, name: str | None = None) -> Callable[[_F], _F]: ...
def register_model(fn: _F | None = None, *, name: str | None = None) -> _F | Callable[[_F], _F]:
    """Register a model constructor under ``name`` (default: the function's ``__name__``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="my_net")``). The
    constructor must accept ``num_classes`` and ``in_channels`` keyword arguments. Registering a
    name that is already taken replaces the old entry and emits a ``UserWarning``.

    Parameters
    ----------
    fn : callable, optional
        The constructor, when used as a bare decorator.
    name : str, optional
        Registry key; defaults to ``fn.__name__``.

    Returns
    -------
    callable
        ``fn`` itself (unchanged), or a decorator when ``fn`` is omitted.
    """

    def decorator(factory: _F) -> _F:
        if not callable(factory):
            raise TypeError(f"register_model expects a callable; got {factory!r}")
        key = name if name is not None else factory.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"model name must be a non-empty str; got {key!r}")
        old = _REGISTRY.get(key)
        if old is not None:
            warnings.warn(
                f"model name {key!r} is already registered to "
                f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', repr(old))}; "
                f"replacing it with "
                f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', '?')}",
                UserWarning,
                stacklevel=2 if fn is None else 3,
            )
        _REGISTRY[key] = factory
        return factory

    if fn is not None:
        return decorator(fn)
    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted alphabetically."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`, e.g. ``"resnet20"``.
    num_classes : int
        Size of the classifier output; the model maps ``(B, in_channels, H, W)`` to
        ``(B, num_classes)``.
    in_channels : int
        Channels of the input images (3 for RGB, 1 for MNIST-like data).
    **kwargs
        Model-specific options (e.g. ``stem="imagenet"`` for ``resnet18``, ``img_size=28`` for
        ``vit_tiny``); see each constructor's docstring.

    Returns
    -------
    nn.Module
        A freshly initialised model (in training mode).

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the valid names), or ``num_classes`` /
        ``in_channels`` is not a positive int.
    """
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(
            f"unknown model name {name!r}; valid names are: {', '.join(list_models())}"
        )
    check_positive_int(num_classes, "num_classes")
    check_positive_int(in_channels, "in_channels")
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
