"""How many positions each compared model takes, and the sample length that fits all of them.

A workflow that cuts a corpus into fixed-length samples (the KL tool's 1024-token chunks) must not hand a model more
positions than its context: ORT GenAI refuses the run outright ("max_length (1026) cannot be greater than model
context_length (256)"), and a Hugging Face model past ``max_position_embeddings`` computes on positions it never
saw. The contexts come from the model folders' own files:

- Hugging Face: ``config.json`` ``max_position_embeddings`` (``n_positions`` for GPT-2-style configs; the
  ``text_config`` of a multimodal config);
- ORT GenAI: ``genai_config.json`` ``model.context_length``.
"""
from __future__ import annotations

import json
import os

#: the config keys that give a Hugging Face model's context, in order of preference
HF_CONTEXT_KEYS = ("max_position_embeddings", "n_positions")


class ChunkTooLongError(ValueError):
    """An explicitly requested sample length over a compared model's context (a usage error)."""


def model_context_length(kind: str, path: str) -> int | None:
    """The context (in tokens) that a model folder declares, or None when it declares none or cannot be read.

    Args:
        kind: ``hf`` (a transformers folder) or ``genai`` (an ORT GenAI folder); other kinds declare none.
        path: the model folder.
    """
    if kind == "hf":
        config = _read_json(os.path.join(path, "config.json"))
        for section in (config, config.get("text_config") or {}):
            for key in HF_CONTEXT_KEYS:
                if _positive_int(section.get(key)):
                    return int(section[key])
        return None
    if kind == "genai":
        model = _read_json(os.path.join(path, "genai_config.json")).get("model") or {}
        return int(model["context_length"]) if _positive_int(model.get("context_length")) else None
    return None


def choose_chunk_tokens(requested: int | None, default: int, contexts: dict[str, int | None], *,
                        option: str = "--chunk-tokens") -> tuple[int, str | None]:
    """The sample length to use: ``requested`` when given, else ``default`` shrunk to the smallest context.

    Args:
        requested: what the user asked for explicitly (None: not given).
        default: the length used when nothing was asked for.
        contexts: model label -> its context (None: declares none; such models do not limit the length).
        option: the option's name, for the messages.

    Returns:
        (the length, a one-line note when the default was shrunk, else None).

    Raises:
        ChunkTooLongError: ``requested`` is over a model's context; the message names the option, the models and
            their context.
    """
    known = {label: c for label, c in contexts.items() if c}
    if requested is not None:
        over = {label: c for label, c in known.items() if c < requested}
        if over:
            smallest = min(over.values())
            raise ChunkTooLongError(f"{option} {requested} is more than the context of {_names(over)}; pass "
                                    f"{option} {smallest} or less")
        return requested, None
    smallest = min(known.values(), default=None)
    if smallest is None or smallest >= default:
        return default, None
    limiting = {label: c for label, c in known.items() if c == smallest}
    return smallest, (f"{option} defaults to {default}, more than the context of {_names(limiting)}: using "
                      f"{smallest}-token chunks")


def _names(contexts: dict[str, int]) -> str:
    return ", ".join(f"{label} ({c} tokens)" for label, c in contexts.items())


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}  # a hub id or an unreadable file: the capture itself will say what is wrong
    return doc if isinstance(doc, dict) else {}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
