"""Loading a PyTorch model for capture: device, dtype and placement checks, HF loading, and the weights' content
hash."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass

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


def checkpoint_folder(path_or_id: str) -> str | None:
    """The folder holding a model's checkpoint: a local folder itself; for a hub id, its snapshot in the local hub
    cache when one is there (what ``from_pretrained`` loaded); else None."""
    if os.path.exists(path_or_id):
        return path_or_id if os.path.isdir(path_or_id) else None
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(path_or_id, local_files_only=True)
    except (OSError, ValueError, ImportError):  # not in the cache, not a valid id, no hub library
        return None
    return folder if os.path.isdir(folder) else None


def state_dict_hash(model: torch.nn.Module) -> tuple[str, str]:
    """sha256 over an in-memory model's state dict (names, dtypes, shapes, bytes), for models without files."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest(), "sha256(state_dict)"


def load_hf_model(path_or_id: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None,
                  trust_remote_code: bool, placement: Placement | None = None) -> torch.nn.Module:
    """Load a transformers model (a local folder, or a hub id where a hub is reachable) in eval mode.

    The class comes from the config's ``architectures`` (``LlamaForCausalLM``, ``BertModel``...), falling back to
    ``AutoModelForCausalLM`` and then ``AutoModel``.

    Args:
        device: where the whole model goes; ignored with a ``placement``, which places it instead.
        placement: spread the model over devices, host memory and disk while loading (accelerate's big-model
            dispatch: transformers loads one checkpoint shard at a time and puts each weight where the map says,
            so host memory never holds the whole model); see ``parse_placement``.

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
    if placement is not None:
        kwargs.update(placement.load_kwargs())
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the CLI shows its own progress; keep stderr to one summary line
    # accelerate warns that offloaded parameters sit on the meta device, which is what an offload means
    dispatch_log = logging.getLogger("accelerate.big_modeling")
    dispatch_level = dispatch_log.level
    if placement is not None:
        dispatch_log.setLevel(logging.ERROR)
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
        dispatch_log.setLevel(dispatch_level)
        if bars:
            hf_logging.enable_progress_bar()
    if placement is not None:  # placed by the dispatch; a .to() would load every offloaded weight into memory
        return model.eval()
    return model.to(device).eval()


#: accelerate's strategies for computing a device map from the free memory of each device.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_PLACEMENT_HINT = ("use auto, balanced, balanced_low_0, sequential or a JSON file mapping module paths to devices, "
                   'e.g. {"model.embed_tokens": 0, "model.layers": "cpu", "lm_head": "disk"}; '
                   "--device puts the whole model on one device")


@dataclass(frozen=True)
class Placement:
    """Where the modules of a model go when it is loaded with accelerate's big-model dispatch.

    Attributes:
        device_map: a strategy of DEVICE_MAP_STRATEGIES, or ``{module path: device}`` (an accelerator index, a
            device string, ``"cpu"`` or ``"disk"``).
        max_memory: ``{device: bytes}`` that the strategy may fill (accelerator indices as ints, ``"cpu"``...);
            what does not fit goes to the next device, then to host memory, then to disk.
        offload_folder: where weights offloaded to disk are written (weights read from safetensors checkpoints
            are read where they are and need no copy).
    """

    device_map: str | dict
    max_memory: dict | None = None
    offload_folder: str | None = None

    def load_kwargs(self) -> dict:
        """The keyword arguments of ``from_pretrained`` for this placement."""
        kwargs: dict = {"device_map": self.device_map}
        if self.max_memory:
            kwargs["max_memory"] = dict(self.max_memory)
        if self.offload_folder:
            kwargs["offload_folder"] = self.offload_folder
        return kwargs

    def to_manifest(self) -> dict:
        """As asked for, for the manifest (the resulting per-module map is recorded beside it)."""
        return {"device_map": self.device_map,
                "max_memory": {str(k): v for k, v in (self.max_memory or {}).items()} or None,
                "offload_folder": os.path.abspath(self.offload_folder) if self.offload_folder else None}


def parse_placement(device_map: str | dict | None, max_memory: str | dict | None = None,
                    offload_folder: str | None = None) -> Placement | None:
    """Check the placement options of a capture (``--device-map``, ``--max-memory``, ``--offload-folder``).

    Args:
        device_map: a strategy (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``), the path of a JSON
            file ``{module path: device}``, or such a dict; None: no placement.
        max_memory: ``DEVICE=SIZE`` pairs separated by commas (``0=2GiB,cpu=4GiB``; binary multiples, ``GB`` too),
            or a dict of them.
        offload_folder: a folder for weights offloaded to disk (created when missing; must be writable).

    Returns:
        The placement, or None when no device map is given.

    Raises:
        CaptureError: accelerate is not installed, an unknown strategy, a missing or malformed JSON file, a device
            this machine lacks, a malformed size, an offload folder that cannot be written, or a memory limit or
            offload folder without a device map.
    """
    if device_map is None or device_map == "":
        if max_memory or offload_folder:
            raise CaptureError("--max-memory and --offload-folder only apply to a model loaded with a device map",
                               hint="add --device-map auto (or balanced, sequential, a JSON file)")
        return None
    try:
        import accelerate  # noqa: F401  (transformers dispatches through it)
    except ImportError:
        raise CaptureError("loading with a device map needs accelerate, which is not installed here",
                           hint="pip install 'tensorparity[torch]' (or pip install 'accelerate>=1.4')") from None
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        device_map = _read_device_map(device_map)
    elif isinstance(device_map, dict):
        device_map = _check_device_map(device_map, None)
    limits = max_memory if isinstance(max_memory, dict) or max_memory is None else _parse_max_memory(max_memory)
    if offload_folder:
        _check_writable(offload_folder)
    return Placement(device_map, {_memory_device(str(k)): int(v) for k, v in limits.items()} if limits else None,
                     offload_folder or None)


def _read_device_map(text: str) -> dict:
    path_like = text.endswith(".json") or os.sep in text or os.path.exists(text)
    if not path_like:
        raise CaptureError(f"unknown device map {text!r}", hint=_PLACEMENT_HINT)
    if not os.path.isfile(text):
        raise CaptureError("device map file not found", text, _PLACEMENT_HINT)
    try:
        with open(text, encoding="utf-8") as fh:
            loaded = json.load(fh)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CaptureError(f"cannot read the device map ({first})", text, _PLACEMENT_HINT) from None
    return _check_device_map(loaded, text)


def _check_device_map(mapping, path: str | None) -> dict:
    """``{module path: device}`` with each device one this machine has (``cpu`` and ``disk`` always)."""
    if not isinstance(mapping, dict) or not mapping or not all(isinstance(k, str) for k in mapping):
        raise CaptureError("a device map must be a non-empty JSON object {module path: device}", path,
                           _PLACEMENT_HINT)
    for module, where in mapping.items():
        if isinstance(where, bool) or not isinstance(where, (int, str)):
            raise CaptureError(f"device map entry {module!r}: {where!r} is not a device", path, _PLACEMENT_HINT)
        if where in ("cpu", "disk"):
            continue
        if isinstance(where, int):
            _check_accelerator(where, f"device map entry {module!r}", path)
        else:
            try:
                parse_device(where)
            except CaptureError as exc:
                raise CaptureError(f"device map entry {module!r}: {exc.what}", path, exc.hint) from None
    return dict(mapping)


def _memory_device(key: str):
    """A max_memory key as accelerate wants it (accelerator indices as ints, names as strings), checked against this
    machine: accelerate fails with a traceback on a device that is not there."""
    key = key.strip()
    if key in ("cpu", "disk"):
        return key
    if key.isdigit():
        _check_accelerator(int(key), f"--max-memory {key}")
        return int(key)
    if key == "mps" or (":" in key and key.partition(":")[2].isdigit()):
        try:
            parse_device(key)
        except CaptureError as exc:
            raise CaptureError(f"--max-memory {key}: {exc.what}", hint=exc.hint) from None
        return key
    raise CaptureError(f"--max-memory: {key!r} is not a device",
                       hint="use an accelerator index (0, 1...), cpu, mps or TYPE:INDEX (xpu:0)")


def _check_accelerator(index: int, what: str, path: str | None = None) -> None:
    count = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    if not 0 <= index < count:
        raise CaptureError(f"{what}: accelerator {index} does not exist here ({count} accelerator(s))", path,
                           f"available devices: {', '.join(available_devices())}, and disk")


def _parse_max_memory(text: str) -> dict:
    from .policy import parse_size
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, size = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            limits[_memory_device(key)] = parse_size(size)
        except ValueError:
            raise CaptureError(f"invalid --max-memory entry {item!r}",
                               hint="write DEVICE=SIZE pairs separated by commas, e.g. 0=2GiB,cpu=4GiB") from None
    if not limits:
        raise CaptureError(f"invalid --max-memory {text!r}", hint="write DEVICE=SIZE pairs, e.g. 0=2GiB,cpu=4GiB")
    return limits


def _check_writable(folder: str) -> None:
    """Create the offload folder if needed and prove a file can be written in it (before a load of minutes)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".parity-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CaptureError(f"the offload folder is not writable ({exc.strerror or type(exc).__name__})", folder,
                           "pass --offload-folder on a disk this user can write, with room for the offloaded "
                           "weights") from None
