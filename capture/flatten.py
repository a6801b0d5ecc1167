"""Flattening module inputs and outputs to stable argument paths (SPEC.md section 5).

A forward's arguments and results are trees of tuples, lists, dicts, dataclasses and transformers ``ModelOutput``s
with tensors at the leaves. Each tensor gets a dotted path (``args.0``, ``kwargs.hidden_states``, ``0``, ``logits``,
``1.0.2``) that depends only on the tree's structure, never on the device or dtype, so keys pair across backends.

This module does not import torch: the caller passes the predicate that recognises a tensor.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

#: Names under which models pass key/value caches (``cache`` since transformers 5.24, the older names before it);
#: skipped unless caches are asked for.
CACHE_NAMES = frozenset({"cache", "past_key_values", "past_key_value", "layer_past", "cache_params",
                         "present_key_values"})
_MAX_DEPTH = 32  # a guard against self-referencing containers


def is_cache_object(obj: Any) -> bool:
    """True for transformers cache objects (``DynamicCache``, ``StaticCache``...), recognised by class name."""
    return any(c.__name__.endswith("Cache") for c in type(obj).__mro__[:-1])


def _cache_items(obj: Any) -> Iterator[tuple[str, Any]]:
    """Per-layer keys/values of a transformers cache (v5 ``layers[i].keys/values``, or v4 ``key_cache``)."""
    layers = getattr(obj, "layers", None)
    if layers is not None:
        for i, layer in enumerate(layers):
            yield f"{i}.key", getattr(layer, "keys", None)
            yield f"{i}.value", getattr(layer, "values", None)
        return
    for i, (k, v) in enumerate(zip(getattr(obj, "key_cache", []) or [], getattr(obj, "value_cache", []) or [])):
        yield f"{i}.key", k
        yield f"{i}.value", v


def _children(obj: Any) -> Iterator[tuple[str, Any]] | None:
    """The (name, child) pairs of a container, or None for a leaf."""
    if isinstance(obj, dict):  # includes ModelOutput (an OrderedDict holding only its non-None fields)
        return ((str(k), v) for k, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return ((str(i), v) for i, v in enumerate(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return ((f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj))
    return None


def flatten(obj: Any, is_tensor: Callable[[Any], bool], prefix: str = "", *,
            include_cache: bool = False) -> list[tuple[str, Any]]:
    """Tensor leaves of ``obj`` with their dotted paths, in a deterministic order.

    Args:
        obj: a tensor or a tree of tuples, lists, dicts, dataclasses and ``ModelOutput``s.
        is_tensor: recognises a leaf to keep (e.g. ``lambda x: isinstance(x, torch.Tensor)``).
        prefix: path of ``obj`` itself (``""`` for a bare output, ``"args"``, ``"kwargs"``).
        include_cache: also descend into key/value caches (skipped by default: they repeat earlier outputs).

    Returns:
        ``[(path, tensor), ...]``; non-tensor leaves (None, ints, strings, configs) are skipped.
    """
    out: list[tuple[str, Any]] = []
    _walk(obj, prefix, is_tensor, include_cache, out, 0)
    return out


def _walk(obj, path, is_tensor, include_cache, out, depth) -> None:
    if is_tensor(obj):
        out.append((path, obj))
        return
    if depth > _MAX_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    if is_cache_object(obj):
        if include_cache:
            for name, child in _cache_items(obj):
                _walk(child, f"{path}.{name}" if path else name, is_tensor, include_cache, out, depth + 1)
        return
    children = _children(obj)
    if children is None:
        return
    for name, child in children:
        if not include_cache and name in CACHE_NAMES:
            continue
        _walk(child, f"{path}.{name}" if path else name, is_tensor, include_cache, out, depth + 1)
