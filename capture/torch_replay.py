"""Replay (protocol/replay.py): call a PyTorch reference model's modules, one at a time, on the inputs a candidate
dump recorded for them, so that each module's own error can be told apart from the error it inherited.

    replayer = TorchReplayer.open("models/llama", dtype="float32")
    for call in replayer.replay(open_dump("cand.h5")):
        ...

Each call is rebuilt from the dump's call structures (protocol/calls.py, format 1.2): tensors from the candidate's
``<module>:in.*`` records, the other arguments from their recorded values. Without call structures (an older dump,
an ONNX candidate) only leaf modules whose recorded inputs are positional tensors alone are rebuilt. A module runs
three times: in the reference's dtype (the module as loaded, untouched), in float64 and in the dtype of the
candidate's output record (its parameters and floating inputs cast, through ``torch.func.functional_call``, so the
model itself is never copied nor changed). A call that cannot be rebuilt is returned with the reason.
"""
from __future__ import annotations

import re
import time
from typing import Iterator

import numpy as np
import torch

from protocol import RecordInfo, split_site
from protocol.replay import ReplayedCall, ReplayedOutput

from .call_structure import class_name
from .flatten import flatten
from .torch_loading import load_hf_model, parse_device, parse_dtype

#: A module whose float64 parameters would exceed this is not replayed (the whole model of a 70B, say).
DEFAULT_MAX_PARAM_BYTES = 8 << 30
_FLOAT_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}
_POSITIONAL = re.compile(r"args\.(\d+)")


class _Skip(Exception):
    """A call that cannot be rebuilt; the message says why."""


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


class TorchReplayer:
    """Replays the modules of ``model`` (a reference ``torch.nn.Module``) on candidate dumps.

    Args:
        model: the reference model (eval mode is set).
        model_path: where it came from (for the report).
        max_param_bytes: modules whose parameters and buffers take more than this in float64 are skipped.
    """

    def __init__(self, model: torch.nn.Module, *, model_path: str = "", max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES):
        self.model = model.eval()
        self.model_path = model_path
        self.max_param_bytes = int(max_param_bytes)
        first = next(iter(model.parameters()), None)
        self.torch_dtype = first.dtype if first is not None else torch.float32
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = str(self.torch_dtype).replace("torch.", "")
        self._modules = dict(model.named_modules())

    @classmethod
    def open(cls, model: str, *, dtype: str | None = None, device: str | None = None) -> "TorchReplayer":
        """The registry's factory (protocol/backends.py): load a transformers model folder in ``dtype`` (default
        float32) on ``device`` (default cpu).

        Raises:
            CaptureError: a missing model, an unknown dtype or device, a failed load.
        """
        dev, dt = parse_device(device or "cpu"), parse_dtype(dtype or "float32")
        return cls(load_hf_model(model, device=dev, dtype=dt, attn_implementation=None, trust_remote_code=False),
                   model_path=model)

    def close(self) -> None:
        """Drop the model (its memory is freed when nothing else holds it)."""
        self.model = None
        self._modules = {}

    def replay(self, reader, *, modules: str | None = None) -> Iterator[ReplayedCall]:
        """One ReplayedCall per module call of the candidate dump ``reader`` that has output records, in the order
        of the candidate's first output record of each call (execution order).

        Args:
            reader: an open DumpReader of the candidate (one rank).
            modules: a regex searched in module paths; other modules are left out.
        """
        pattern = re.compile(modules) if modules else None
        calls = reader.calls()
        for (path, call, sample, step), group in _group_records(reader).items():
            if pattern is not None and not pattern.search(path):
                continue
            started = time.perf_counter()
            module = self._modules.get(path)
            result = ReplayedCall(path, call, sample, step, class_name(module) if module is not None else "",
                                  calls.module_class(path) if calls is not None else None)
            try:
                if module is None:
                    raise _Skip(f"the reference model has no module {path or '<root>'!r}")
                result.outputs = self._replay_call(module, path, group, calls, (sample, step, call), reader)
            except _Skip as why:
                result.skipped = str(why)
            result.seconds = time.perf_counter() - started
            yield result

    # -- one call ----------------------------------------------------------------------------------------------

    def _replay_call(self, module, path: str, group: dict, calls, position: tuple, reader) -> list:
        outs = [i for i in group["out"].values() if i.dtype in _FLOAT_DTYPES]
        if not outs:
            raise _Skip("its outputs are not floating-point tensors")
        partial = [i for i in outs if i.storage != "full" or not i.has_data]
        if len(partial) == len(outs):
            raise _Skip(f"its outputs are recorded as {outs[0].storage}, not in full (capture them in full: "
                        f"--policy '{re.escape(path)}:=full')")
        outs = [i for i in outs if i not in partial]
        signature = calls.signature(path, *position) if calls is not None else None
        if signature is None:
            signature = _positional_signature(module, path, group)
        weight = sum(t.numel() for t in (*module.parameters(), *module.buffers())) * 8
        if weight > self.max_param_bytes:
            raise _Skip(f"its parameters take {weight / 2**30:.1f} GiB in float64, over the replay budget of "
                        f"{self.max_param_bytes / 2**30:.1f} GiB")
        inputs = {arg: _read_tensor(reader, info, self.device) for arg, info in group["in"].items()}
        low = _FLOAT_DTYPES.get(max(outs, key=lambda i: i.numel).dtype)
        variants = {"reference": self.torch_dtype, "exact": torch.float64}
        if low is not None and low != self.torch_dtype:
            variants["low"] = low
        results = {}
        for name, dtype in variants.items():
            args, kwargs = _rebuild(signature, inputs, group["in"], dtype, self.device)
            results[name] = self._run(module, dtype, args, kwargs, cast=name != "reference")
        replayed = []
        for info in outs:
            arg = split_site(info.key.site)[2]
            got = {name: out.get(arg) for name, out in results.items()}
            if any(t is None for t in got.values()) or tuple(got["reference"].shape) != tuple(info.shape):
                continue  # an output the replay does not give, or of another shape: nothing to compare it with
            replayed.append(ReplayedOutput(info, _to_numpy(got["reference"]), _to_numpy(got["exact"]),
                                           _to_numpy(got["low"]) if "low" in got else None))
        if not replayed:
            raise _Skip("the replayed module returned none of the recorded outputs (in that shape)")
        return replayed

    def _run(self, module, dtype: torch.dtype, args: tuple, kwargs: dict, *, cast: bool) -> dict:
        """The module's outputs by argument path; parameters and buffers cast to ``dtype`` when ``cast``."""
        try:
            with torch.no_grad():
                if not cast:
                    out = module(*args, **kwargs)
                else:
                    state = {name: t.to(dtype) if t.is_floating_point() else t
                             for name, t in (*module.named_parameters(), *module.named_buffers())}
                    out = torch.func.functional_call(module, state, args, kwargs, tie_weights=True, strict=False)
        except Exception as exc:  # an op without a kernel for this dtype, or a call the dump did not rebuild well
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _Skip(f"the reference module raised {type(exc).__name__} in {str(dtype).replace('torch.', '')}"
                        f"{': ' + text[:200] if text else ''}") from None
        return dict(flatten(out, _is_tensor, ""))


def _group_records(reader) -> dict:
    """The records of a dump by module call: ``{(module, call, sample, step): {"in": {arg: info}, "out": {...}}}``,
    only calls with output records, in the order of their first output record."""
    groups: dict = {}
    for info in reader.records():
        module, direction, arg = split_site(info.key.site)
        if direction not in ("in", "out"):
            continue
        g = groups.setdefault((module, info.key.call, info.key.sample, info.key.step), {"in": {}, "out": {}, "first": None})
        g[direction][arg] = info
        if direction == "out" and g["first"] is None:
            g["first"] = info.seq
    kept = [(k, g) for k, g in groups.items() if g["first"] is not None]
    kept.sort(key=lambda kg: kg[1]["first"])
    return dict(kept)


def _positional_signature(module, path: str, group: dict) -> dict:
    """The call of a leaf module from its recorded inputs alone, when they are positional tensors ``args.0..n``
    (a dump without call structures: format 1.1 and older, or another backend's)."""
    if next(iter(module.children()), None) is not None:
        raise _Skip("the dump has no call structure for it (format 1.1 or older, or not a PyTorch capture), and "
                    "only a leaf module can be rebuilt from its inputs alone")
    numbers = [_POSITIONAL.fullmatch(arg) for arg in group["in"]]
    if not numbers or not all(numbers) or sorted(int(m.group(1)) for m in numbers) != list(range(len(numbers))):
        raise _Skip("the dump has no call structure for it, and its recorded inputs are not positional tensors "
                    f"alone ({', '.join(sorted(group['in'])) or 'none'})")
    return {"args": [{"tensor": f"args.{i}"} for i in range(len(numbers))], "kwargs": {}}


def _read_tensor(reader, info: RecordInfo, device) -> torch.Tensor | None:
    """A recorded input as a tensor of its recorded dtype, or None when it is not held in full."""
    if info.storage != "full" or not info.has_data:
        return None
    if info.dtype == "bfloat16":
        bits = np.ascontiguousarray(reader.read(info, raw=True))
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(device)
    data = np.ascontiguousarray(reader.read(info))
    if data.dtype.kind not in "biuf":
        return None
    return torch.from_numpy(data).to(device)


def _rebuild(signature: dict, inputs: dict, infos: dict, dtype: torch.dtype, device) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a signature, floating tensors (and floating dtype arguments) as ``dtype``."""
    def node(n, name: str):
        if not isinstance(n, dict) or len(n) < 1:
            raise _Skip(f"argument {name} has a malformed call structure")
        if "tensor" in n:
            arg = n["tensor"]
            t = inputs.get(arg)
            if t is None:
                info = infos.get(arg)
                raise _Skip(f"input {arg} was not recorded" if info is None else
                            f"input {arg} is recorded as {info.storage}, not in full")
            return t.to(dtype) if t.is_floating_point() else t
        if "value" in n:
            return n["value"]
        if "tuple" in n:
            return tuple(node(v, f"{name}.{i}") for i, v in enumerate(n["tuple"]))
        if "list" in n:
            return [node(v, f"{name}.{i}") for i, v in enumerate(n["list"])]
        if "dict" in n:
            return {k: node(v, f"{name}.{k}") for k, v in n["dict"].items()}
        if "dtype" in n:
            recorded = getattr(torch, str(n["dtype"]), None)
            if not isinstance(recorded, torch.dtype):
                raise _Skip(f"argument {name} names the unknown dtype {n['dtype']!r}")
            return dtype if recorded.is_floating_point else recorded
        if "device" in n:
            return device  # the replay's device, wherever the candidate ran
        if "cache" in n:
            if n.get("fresh"):
                return None  # it held nothing of this position yet: the module computes the same without it
            raise _Skip(f"argument {name} is a {n['cache']} carried from earlier steps, which the dump does not hold")
        raise _Skip(f"argument {name} is a {n.get('opaque', 'non-tensor')} object, which a dump does not hold")
    args = tuple(node(v, f"args.{i}") for i, v in enumerate(signature.get("args", [])))
    kwargs = {k: node(v, f"kwargs.{k}") for k, v in signature.get("kwargs", {}).items()}
    return args, kwargs


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A replayed output on the host: float64 stays, everything else as float32 (bfloat16/float16 exactly)."""
    t = t.detach().to("cpu")
    return t.numpy() if t.dtype == torch.float64 else t.to(torch.float32).numpy()

