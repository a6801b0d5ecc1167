"""The PyTorch capture backend: hooks on every module, over an input set, in forward, generate or teacher-forced mode.

    backend = TorchBackend.from_pretrained("path/to/hf-folder", device="cpu", dtype="float32")
    backend.capture(read_input_set("inputs.h5"), "cpu-fp32.h5", CaptureOptions(label="cpu-fp32"))

Generate modes are greedy: step 0 is the prefill, step t the t-th decode with the KV cache; a fixed number of steps
(no stop at EOS, so that two captures always have the same steps to pair). The tokens that were fed are stored as
``generated_tokens.s<sample>``; a teacher-forced capture feeds the reference dump's tokens and also stores its own
argmax as ``argmax_tokens.s<sample>``.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os

import numpy as np
import torch

from protocol import CaptureError, InputSet
from protocol.backends import check_options

from .base import CaptureBackend, CaptureOptions, CaptureSummary, reference_tokens
from .flatten import flatten
from .sink import RecordSink
from .standard_inputs import InputAdjustments, fit_inputs
from .torch_hooks import ModuleSelection, logical_dtype, torch_capture
from .torch_loading import (
    Placement, checkpoint_folder, describe_device, load_hf_model, parse_device, parse_dtype, parse_placement,
    state_dict_hash, weights_hash,
)

log = logging.getLogger(__name__)


class TorchBackend(CaptureBackend):
    """Capture a ``torch.nn.Module`` (typically a transformers model) with forward hooks.

    Args:
        model: the module (moved to ``device`` and cast to ``dtype``; a model that accelerate dispatched with a
            ``device_map``, over several devices or with weights offloaded to disk, is captured where it is, and
            then device and dtype must not be given).
        device: a torch device string; default: where the model's parameters are.
        dtype: ``float32``/``float16``/``bfloat16``; default: the parameters' dtype.
        model_path: the folder or hub id it came from (recorded, and hashed when it is a folder).
        selection: which modules to hook (default all, the root included).
        placement: the placement the model was loaded with (recorded in the manifest).
    """

    method = "torch-hooks"

    def __init__(self, model: torch.nn.Module, *, device: str | None = None, dtype: str | None = None,
                 model_path: str | None = None, selection: ModuleSelection | None = None,
                 placement: Placement | None = None):
        first = next(model.parameters(), None)
        self.placement = placement
        self.device_map = dispatched_map(model)
        if self.device_map:  # spread over devices or offloaded (a device_map): capture it where it is
            if device or dtype:
                raise CaptureError("the model is spread over several devices or offloaded (device_map); moving it "
                                   "to one device or casting it here would undo that", hint="pass no device or "
                                   "dtype, and load the model with the placement and dtype to capture")
            # inputs go where accelerate runs the first module; parameters offloaded to disk sit on "meta"
            self.device = execution_device(model)
            self.dtype = first.dtype if first is not None else torch.float32
            self.model = model.eval()
        else:
            self.device = parse_device(device) if device else (first.device if first is not None
                                                               else torch.device("cpu"))
            self.dtype = parse_dtype(dtype) if dtype else (first.dtype if first is not None else torch.float32)
            self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model_path = model_path
        self.selection = selection or ModuleSelection()
        self._params = inspect.signature(model.forward).parameters
        self._cache_arg = cache_argument(self._params)

    @classmethod
    def from_pretrained(cls, model_path_or_id: str, *, device: str | None = None, dtype: str = "float32",
                        attn_implementation: str | None = None, trust_remote_code: bool = False,
                        selection: ModuleSelection | None = None, device_map: str | dict | None = None,
                        max_memory: str | dict | None = None,
                        offload_folder: str | None = None) -> "TorchBackend":
        """Load a transformers model (local folder, or hub id where a hub is reachable) for capture.

        Args:
            device: where the whole model goes (default cpu); not with a device map.
            dtype: the dtype it is loaded in.
            device_map, max_memory, offload_folder: spread it over devices, host memory and disk while loading
                (accelerate's dispatch; see ``torch_loading.parse_placement``): each module is captured on the
                device it was placed on, and weights offloaded to disk are loaded for their module's forward only.

        Raises:
            CaptureError: a missing model, an unavailable device, an unknown dtype, a bad placement, a failed load.
        """
        placement = parse_placement(device_map, max_memory, offload_folder)  # all checks before the (slow) load
        if placement is not None and device:
            raise CaptureError(f"--device {device} and a device map both say where the model goes",
                               hint="pass one of them: --device for one device, --device-map to spread it")
        dev, dt = parse_device(device or "cpu"), parse_dtype(dtype)
        model = load_hf_model(model_path_or_id, device=dev, dtype=dt, attn_implementation=attn_implementation,
                              trust_remote_code=trust_remote_code, placement=placement)
        if dispatched_map(model):  # placed and cast by the load
            return cls(model, model_path=model_path_or_id, selection=selection, placement=placement)
        return cls(model, device=str(next(model.parameters()).device) if placement else (device or "cpu"),
                   dtype=dtype, model_path=model_path_or_id, selection=selection, placement=placement)

    @classmethod
    def open(cls, model: str, *, device: str | None = None, dtype: str | None = None, provider: str | None = None,
             attn_implementation: str | None = None, device_map: str | None = None, max_memory: str | None = None,
             offload_folder: str | None = None) -> "TorchBackend":
        """The registry's factory (protocol/backends.py): ``from_pretrained`` on ``device`` (default cpu) or with a
        device map, in ``dtype`` (default float32).

        Raises:
            CaptureError: a provider (a torch model has none), or what ``from_pretrained`` raises.
        """
        check_options("torch", device=device, dtype=dtype, provider=provider, attn_implementation=attn_implementation,
                      device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        return cls.from_pretrained(model, device=device, dtype=dtype or "float32",
                                   attn_implementation=attn_implementation, device_map=device_map,
                                   max_memory=max_memory, offload_folder=offload_folder)

    # -- CaptureBackend --------------------------------------------------------------------------------------------

    def capture(self, inputs: InputSet, output: str, options: CaptureOptions, *, progress=None) -> CaptureSummary:
        """See ``CaptureBackend.capture``; under ``torch.distributed`` the rank and world size come from it."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and options.world_size == 1:
            options = dataclasses.replace(options, rank=dist.get_rank(), world_size=dist.get_world_size())
        return super().capture(inputs, output, options, progress=progress)

    def _describe(self) -> dict:
        if self.model_path and os.path.isdir(self.model_path):
            digest, method = weights_hash(self.model_path)
        elif self.device_map:  # offloaded weights are meta tensors in the state dict: hash the checkpoint's files
            folder = checkpoint_folder(self.model_path) if self.model_path else None
            digest, method = weights_hash(folder) if folder else ("", "none")
        else:
            digest, method = state_dict_hash(self.model)
        config = getattr(self.model, "config", None)
        import transformers
        return {
            "model": {"path": os.path.abspath(self.model_path) if self.model_path and os.path.exists(self.model_path)
                      else (self.model_path or ""), "hash": digest, "hash_method": method,
                      "class": type(self.model).__name__, "model_type": getattr(config, "model_type", "")},
            "framework": {"name": "torch", "version": torch.__version__, "transformers": transformers.__version__,
                          "attn_implementation": getattr(config, "_attn_implementation", None)},
            "device": describe_device(self.device),
            "dtype": logical_dtype(self.dtype),
            "capture": {"selection": self.selection.to_dict(), **self._placement_manifest()},
        }

    def _placement_manifest(self) -> dict:
        """The placement asked for and the per-module map accelerate made of it (absent for a one-device model)."""
        if self.placement is None and not self.device_map:
            return {}
        asked = self.placement.to_manifest() if self.placement is not None else {}
        placed = getattr(self.model, "hf_device_map", None) or {}
        return {"placement": {**asked, "modules": {k: str(v) for k, v in placed.items()}}}

    def _capture_impl(self, inputs: InputSet, sink: RecordSink, options: CaptureOptions, progress) -> dict:
        samples = inputs.samples[:options.max_samples] if options.max_samples else inputs.samples
        if not samples:
            raise CaptureError("the input set has no samples", inputs.path)
        forced = reference_tokens(options.reference, inputs, len(samples)) if options.mode == "teacher-forced" else None
        steps = 1 if options.mode == "forward" else options.max_new_tokens
        if forced is not None:
            steps = min(steps, min(np.shape(t)[-1] for t in forced))
        check = self._unhooked_outputs(samples[0], options.mode) if options.check_perturbation else None
        result: dict = {"capture": {"steps": steps, "stop_at_eos": False}}
        adjustments = InputAdjustments()
        hooked_first = None
        # no_grad rather than inference_mode: inference tensors have no version counter (see torch_hooks'
        # share_unchanged, off here: correctness first)
        with torch.no_grad(), torch_capture(self.model, sink, options.policy, selection=self.selection) as cap:
            for i, sample in enumerate(samples):
                feed = self._tensors(sample, inputs.path, i, adjustments)
                if options.mode == "forward":
                    cap.at(i, 0)
                    out = self.model(**feed, **self._no_cache())
                    first = out
                    _advance(progress)
                else:
                    first, fed, argmax = self._generate(cap, i, feed, steps, forced[i] if forced else None, progress)
                    sink.put_array(f"generated_tokens.s{i}", fed)
                    if forced is not None:
                        sink.put_array(f"argmax_tokens.s{i}", argmax)
                if i == 0 and check is not None:
                    hooked_first = _final_outputs(first)
        result["capture"].update(adjustments.to_manifest())
        if check is not None:
            result["perturbation_check"] = _compare_outputs(check, hooked_first)
        if forced is not None:
            result["capture"]["reference"] = os.path.abspath(options.reference)
        return result

    # -- modes -----------------------------------------------------------------------------------------------------

    def _generate(self, cap, sample: int, feed: dict, steps: int, forced, progress):
        """Greedy decoding with the KV cache; returns (prefill output, fed tokens, own argmax tokens)."""
        if "input_ids" not in feed:
            raise CaptureError("generate modes need 'input_ids' in the input set")
        if self._cache_arg is None:
            raise CaptureError(f"{type(self.model).__name__}.forward takes no key/value cache argument "
                               f"(none of {', '.join(CACHE_ARGUMENTS)})", hint="capture this model in forward mode")
        kwargs, cache, fed, argmax, first = dict(feed), None, [], [], None
        mask = feed.get("attention_mask")
        for step in range(steps):
            cap.at(sample, step)
            out = self.model(**kwargs, **{self._cache_arg: cache}, use_cache=True)
            first = out if step == 0 else first
            logits = out["logits"] if isinstance(out, dict) else out[0]
            own = logits[:, -1, :].argmax(dim=-1)
            argmax.append(own.to("cpu"))
            nxt = torch.as_tensor(forced[..., step], device=own.device).reshape(own.shape) if forced is not None else own
            fed.append(nxt.to("cpu"))
            cache = _returned_cache(out, self._cache_arg)
            kwargs = {"input_ids": nxt.reshape(-1, 1).to(torch.long)}
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                kwargs["attention_mask"] = mask
            _advance(progress)
        return first, _token_array(fed), _token_array(argmax)

    def _unhooked_outputs(self, sample, mode: str) -> list:
        """The final outputs of the first sample's first step, run without any hook (observer-effect check)."""
        feed = self._tensors(sample, None, 0, InputAdjustments())
        with torch.no_grad():
            out = self.model(**feed, **(self._no_cache() if mode == "forward" else {"use_cache": True}))
        return _final_outputs(out)

    # -- inputs ----------------------------------------------------------------------------------------------------

    def _no_cache(self) -> dict:
        return {"use_cache": False} if "use_cache" in self._params else {}

    def _tensors(self, sample, path, index: int, adjustments: InputAdjustments) -> dict:
        """The sample's arrays that the model's forward takes, as batched tensors on the device.

        A standard input the forward does not take (capture/standard_inputs.py) is left out when it holds its
        default and refused when it says more (a padded mask); nothing is derived, since transformers models fill in
        their own defaults. Other arrays the forward does not take are left out (one input set feeds every backend).
        """
        taken = {name: None for name in sample.arrays if name in self._params}
        fitted = fit_inputs(sample.arrays, taken, sample=index, path=path, refuse_unknown=False,
                            other_remedy="capture a model whose forward takes {name}")
        adjustments.add(fitted)
        feed = {}
        for name, arr in fitted.arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if t.dim() == 1:
                t = t.unsqueeze(0)  # input sets store [1, L]; accept [L] too
            if t.is_floating_point():
                t = t.to(self.dtype)
            elif name in ("input_ids", "token_type_ids", "position_ids"):
                t = t.to(torch.long)
            feed[name] = t.to(self.device)
        if not feed:
            raise CaptureError(f"no array of the input set is an argument of {type(self.model).__name__}.forward "
                               f"(the sample has {sorted(sample.arrays)})", path)
        return feed


#: The names under which a model's forward takes its key/value cache, newest first: transformers 5.24 renamed
#: ``past_key_values`` (and Mamba's ``cache_params``) to ``cache`` and deprecated the old names.
CACHE_ARGUMENTS = ("cache", "past_key_values", "cache_params")


def cache_argument(params) -> str | None:
    """The name under which a forward with these parameters takes its cache (the newest it has), or None."""
    return next((name for name in CACHE_ARGUMENTS if name in params), None)


def dispatched_map(model: torch.nn.Module) -> dict:
    """The device map of a model that accelerate dispatched (several devices, or weights offloaded to disk: then
    its hooks move weights and inputs per module); ``{}`` for a model that sits on one device."""
    placed = getattr(model, "hf_device_map", None) or {}
    where = {str(d) for d in placed.values()}
    return dict(placed) if len(where) > 1 or "disk" in where else {}


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where a dispatched model runs its first module: the root hook's execution device, else the first parameter
    that is not offloaded (on ``meta``), else cpu."""
    hook = getattr(model, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def _returned_cache(out, name: str):
    """The cache a forward returned, read under the name it was passed by (never a deprecated alias: transformers'
    ``ModelOutput`` maps old names to new ones with a warning)."""
    if isinstance(out, dict):
        if name not in out.keys():  # keys(), not ``in out``: ModelOutput.__contains__ translates (and warns)
            raise CaptureError(f"the model returned no '{name}' although use_cache=True was passed",
                               hint="capture this model in forward mode")
        return out[name]
    return out[1]


def _advance(progress) -> None:
    if progress is not None:
        progress.advance()


def _token_array(tokens: list) -> np.ndarray:
    """Per-step token tensors of shape [batch] as int64 ``[steps]`` (batch 1) or ``[batch, steps]``."""
    arr = torch.stack(tokens, dim=-1).to(torch.int64).numpy()
    return arr[0] if arr.shape[0] == 1 else arr


def _final_outputs(out) -> list:
    return [(path, t.detach().to("cpu").clone()) for path, t in flatten(out, lambda x: isinstance(x, torch.Tensor))]


def _compare_outputs(unhooked: list, hooked: list) -> dict:
    """Bitwise comparison of two lists of (path, tensor) final outputs."""
    same = [a[0] == b[0] and a[1].shape == b[1].shape and a[1].dtype == b[1].dtype for a, b in zip(unhooked, hooked)]
    identical = len(unhooked) == len(hooked) and all(same)
    max_diff = 0.0
    if identical:
        for (_, a), (_, b) in zip(unhooked, hooked):
            bits = torch.int16 if a.element_size() == 2 else (torch.int32 if a.element_size() == 4 else None)
            if a.is_floating_point():
                equal = torch.equal(a.view(bits), b.view(bits)) if bits is not None else torch.equal(a, b)
                diff = (a.double() - b.double()).abs().nan_to_num(0.0).max().item() if a.numel() else 0.0
                max_diff = max(max_diff, diff)
            else:
                equal = torch.equal(a, b)
            identical = identical and equal
    return {"bit_identical": bool(identical), "sample": 0, "step": 0, "outputs": [p for p, _ in hooked],
            "max_abs_diff": max_diff}


def capture_torch_model(model: str, inputs_path: str, output: str, options: CaptureOptions, *,
                        device: str | None = None, dtype: str = "float32", attn_implementation: str | None = None,
                        trust_remote_code: bool = False, selection: ModuleSelection | None = None,
                        device_map: str | None = None, max_memory: str | None = None,
                        offload_folder: str | None = None, show_progress: bool | None = None) -> CaptureSummary:
    """Load a model and an input set and capture them into a dump (what ``parity capture torch`` runs).

    Args:
        model: a local HF folder or a hub id.
        inputs_path: the input set file.
        output: the dump to write (must not exist).
        options: what to capture; device (default cpu), dtype, attn_implementation, trust_remote_code, selection,
            device_map, max_memory, offload_folder: see ``TorchBackend.from_pretrained``.
        show_progress: a progress bar over samples x steps (default: when stderr is a terminal).

    Raises:
        ParityError: a bad input set, model, device, dtype, reference or output.
    """
    from protocol import read_input_set
    from common.console import progress
    inputs = read_input_set(inputs_path)
    if os.path.exists(output):
        raise CaptureError("a dump already exists under this name", output,
                           "choose another output name; tensorparity never overwrites a dump")
    backend = TorchBackend.from_pretrained(model, device=device, dtype=dtype, attn_implementation=attn_implementation,
                                           trust_remote_code=trust_remote_code, selection=selection,
                                           device_map=device_map, max_memory=max_memory,
                                           offload_folder=offload_folder)
    count = min(len(inputs), options.max_samples or len(inputs))
    steps = 1 if options.mode == "forward" else max(options.max_new_tokens, 1)
    with progress(count * steps, f"capture {options.label or 'torch'}", enabled=show_progress) as bar:
        return backend.capture(inputs, output, options, progress=bar)
