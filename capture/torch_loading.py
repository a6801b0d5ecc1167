"""Loading a PyTorch model for capture: device and dtype checks, HF loading, and the weights' content hash."""
from __future__ import annotations

import hashlib
import json
import os

import torch

from protocol import CaptureError, atomic_write_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HASH_BLOCK = 8 << 20


def parse_dtype(name: str) -> torch.dtype:
    """``float32|float16|bfloat16`` (or fp32/fp16/bf16) as a torch dtype.

    Raises:
        CaptureError: any other name.
    """
    dtype = DTYPES.get(str(name).lower())
    if dtype is None:
        raise CaptureError(f"unknown dtype {name!r}", hint="use float32, float16 or bfloat16")
    return dtype


def available_devices() -> list[str]:
    """The torch devices usable in this process (``cpu`` first)."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def parse_device(text: str) -> torch.device:
    """A torch device string checked against what exists here.

    Raises:
        CaptureError: a malformed string, or a device this machine does not have (the message lists those it has).
    """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CaptureError(f"invalid device {text!r}",
                           hint=f"use a torch device string; available here: {', '.join(available_devices())}") \
            from None
    if device.type == "cpu":
        return device
    have = available_devices()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CaptureError(f"device {text!r} was asked for but CUDA is not available on this machine",
                           hint=f"available devices: {', '.join(have)}")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CaptureError(f"device {text!r} is not available ({reason})",
                           hint=f"available devices: {', '.join(have)}") from None
    return device


def describe_device(device: torch.device) -> dict:
    """``{"type", "name", "index"}`` for the manifest (the accelerator's product name when torch knows it)."""
    name = device.type
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = "cpu"
    return {"type": device.type, "name": name, "index": device.index}


def weights_hash(folder: str) -> tuple[str, str]:
    """sha256 over a model folder's weight files (names and bytes, sorted, streamed from disk) and config.json.

    Reading a 70B model's ~140 GB takes minutes, so the digest is cached per user (``$XDG_CACHE_HOME/tensorparity``)
    under the files' absolute paths, sizes and modification times: a capture of an unchanged model reads no weights.

    Returns:
        ``(hexdigest, method)``; ``("", "none")`` when the folder holds no weight file.
    """
    folder = os.path.abspath(folder)
    names = sorted(n for n in os.listdir(folder) if n.endswith(_WEIGHT_SUFFIXES) or n == "config.json")
    if not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        return "", "none"
    method = "sha256(weight files + config.json)"
    stats = [(n, os.stat(os.path.join(folder, n))) for n in names]
    key = hashlib.sha256(json.dumps([folder] + [[n, st.st_size, st.st_mtime_ns] for n, st in stats]).encode())
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tensorparity",
                         "weights-hash", key.hexdigest() + ".json")
    try:
        with open(cache, encoding="utf-8") as fh:
            cached = json.load(fh)
        if cached.get("method") == method and isinstance(cached.get("sha256"), str):
            return cached["sha256"], method
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    try:  # a cache that cannot be written only costs the next capture the same read
        atomic_write_json(cache, {"folder": folder, "method": method, "sha256": h.hexdigest()})
    except OSError:
        pass
    return h.hexdigest(), method


def state_dict_hash(model: torch.nn.Module) -> tuple[str, str]:
    """sha256 over an in-memory model's state dict (names, dtypes, shapes, bytes), for models without files."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest(), "sha256(state_dict)"


def load_hf_model(path_or_id: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None,
                  trust_remote_code: bool) -> torch.nn.Module:
    """Load a transformers model (a local folder, or a hub id where a hub is reachable) in eval mode.

    The class comes from the config's ``architectures`` (``LlamaForCausalLM``, ``BertModel``...), falling back to
    ``AutoModelForCausalLM`` and then ``AutoModel``.

    Raises:
        CaptureError: the path does not exist, is not a model folder, or loading fails.
    """
    import transformers
    local = os.path.exists(path_or_id)
    if not local and (path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1):
        raise CaptureError("no such model folder", path_or_id, "pass a local Hugging Face model folder or a hub id")
    if local and not os.path.isfile(os.path.join(path_or_id, "config.json")):
        raise CaptureError("not a Hugging Face model folder (no config.json)", path_or_id,
                           "pass the folder written by save_pretrained")
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the CLI shows its own progress; keep stderr to one summary line
    try:
        config = transformers.AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        if cls is None:
            cls = transformers.AutoModelForCausalLM if arch and arch.endswith(("ForCausalLM", "LMHeadModel")) \
                else transformers.AutoModel
        model = cls.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if local else " (hub ids need a reachable hub; pass a local folder otherwise)"
        raise CaptureError(f"cannot load the model: {first}{where}", path_or_id) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()
