"""The signature of a module call (protocol/calls.py): its arguments as a JSON tree whose tensor leaves name the
records that hold them, so that a replay can call the module again from a dump.

The tree mirrors ``flatten``'s walk (capture/flatten.py), so a tensor node's path is exactly the argument path of
its ``<module>:in.<path>`` record. Like flatten, this module does not import torch: the caller passes the predicate
that recognises a tensor.
"""
from __future__ import annotations

from typing import Any, Callable

from .flatten import _MAX_DEPTH, is_cache_object

_SCALARS = (bool, int, float, str)


def encode_call(args: tuple, kwargs: dict, is_tensor: Callable[[Any], bool], *,
                cache_fresh: Callable[[Any], bool]) -> dict:
    """The signature ``{"args": [...], "kwargs": {...}}`` of one call.

    Args:
        args, kwargs: what the module's forward received.
        is_tensor: recognises a tensor leaf.
        cache_fresh: whether a key/value cache object held nothing of this step's position when it began.
    """
    return {"args": [_node(a, f"args.{i}", is_tensor, cache_fresh, 0) for i, a in enumerate(args)],
            "kwargs": {str(k): _node(v, f"kwargs.{k}", is_tensor, cache_fresh, 0) for k, v in kwargs.items()}}


def _node(obj: Any, path: str, is_tensor, cache_fresh, depth: int) -> dict:
    if is_tensor(obj):
        return {"tensor": path}
    if obj is None or isinstance(obj, _SCALARS):
        return {"value": obj}
    kind = type(obj)
    if kind.__module__ == "torch" and kind.__name__ in ("dtype", "device"):
        return {kind.__name__: str(obj).replace("torch.", "")}
    if depth > _MAX_DEPTH:
        return {"opaque": _qualname(obj)}
    if is_cache_object(obj):
        return {"cache": kind.__name__, "fresh": bool(cache_fresh(obj))}
    if isinstance(obj, (tuple, list)) and kind in (tuple, list):  # not a namedtuple: it would need its class
        return {kind.__name__: [_node(v, f"{path}.{i}", is_tensor, cache_fresh, depth + 1) for i, v in enumerate(obj)]}
    if kind is dict and all(isinstance(k, str) for k in obj):
        return {"dict": {k: _node(v, f"{path}.{k}", is_tensor, cache_fresh, depth + 1) for k, v in obj.items()}}
    return {"opaque": _qualname(obj)}


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def class_name(module: Any) -> str:
    """The qualified class name of a module (``transformers.models.llama.modeling_llama.LlamaMLP``)."""
    return _qualname(module)
