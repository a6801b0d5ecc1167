"""ORT GenAI capture backend: logits for every prompt position (and optional intermediates) via the generator API.

    backend = GenaiBackend("path/to/genai-model-folder")
    backend.capture(read_input_set("inputs.h5"), "genai-int4.h5", CaptureOptions(label="genai-int4"))

Token ids always come from the input set (never from GenAI's tokenizer). Step 0 is the prefill: the whole prompt
is appended at once and ``get_output("logits")`` read; when the build returns fewer positions than the prompt (only
the last one, or a fixed window), the prompt is fed again one token at a time and the per-token logits are
concatenated. Steps 1.. of the generate modes append one token each (greedy, or the reference's tokens when
teacher-forced), like the PyTorch capture. Intermediates come from a copy of the model folder whose model.onnx has
extra graph outputs (capture/onnx_inject.py), read with ``get_output(name)``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from importlib import metadata

import numpy as np

from protocol import CaptureError, InputSet, RecordKey
from protocol.backends import check_options

from .base import CaptureBackend, CaptureOptions, reference_tokens
from .onnx_backend import file_sha256
from .onnx_inject import inject_outputs, load_graph_only
from .onnx_names import GENAI_BUILDER_RENAMES, load_rename_rules, map_value_sites, reference_sites_of
from .onnx_records import put_numpy_record
from .sink import RecordSink
from .standard_inputs import InputAdjustments, fit_inputs

log = logging.getLogger(__name__)
GENAI_DISTRIBUTIONS = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml",
                       "onnxruntime-genai-rocm", "onnxruntime-genai-winml")

#: what else to do about a padded sample (the generator API feeds whole sequences, one per sample)
GENAI_REMEDY = "capture padded batches with a backend whose model takes {name} ('parity capture torch' or 'onnx')"


def installed_genai() -> dict:
    """Which onnxruntime-genai distribution is installed (it decides the execution provider) and its version."""
    found = {}
    for name in GENAI_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class GenaiBackend(CaptureBackend):
    """Capture an ORT GenAI model folder (genai_config.json + model.onnx).

    Args:
        model_dir: the folder written by the GenAI model builder.
        intermediates: also capture intermediate values (injected into a scratch copy of the folder).
        include_ops, exclude_ops, name_regex: filters for the injected values.
        rename: rename rules for module paths (default: GENAI_BUILDER_RENAMES, the builder's names -> HF names).
        reference_sites: a dump whose site forms the mapped sites take (see onnx_names).
        scratch_dir: where the scratch copy goes (default: a hidden folder inside model_dir).
        prompt_feed: ``auto`` (whole prompt, falling back to one token at a time when the build returns fewer
            positions) or ``token`` (always one token at a time).
    """

    method = "ort-genai"

    @classmethod
    def open(cls, model: str, *, device: str | None = None, dtype: str | None = None, provider: str | None = None,
             attn_implementation: str | None = None, device_map: str | None = None, max_memory: str | None = None,
             offload_folder: str | None = None) -> "GenaiBackend":
        """The registry's factory (protocol/backends.py).

        Raises:
            CaptureError: any device, dtype, provider, attention choice or device map (the build and the installed
                distribution fix them), or what the constructor raises.
        """
        check_options("genai", device=device, dtype=dtype, provider=provider, attn_implementation=attn_implementation,
                      device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        return cls(model)

    def __init__(self, model_dir: str, *, intermediates: bool = False, include_ops=None, exclude_ops=None,
                 name_regex: str | None = None, rename=None, reference_sites: str | None = None,
                 scratch_dir: str | None = None, prompt_feed: str = "auto"):
        model_dir = os.path.abspath(os.fspath(model_dir))
        config_path = os.path.join(model_dir, "genai_config.json")
        if not os.path.isfile(config_path):
            raise CaptureError("not an ORT GenAI model folder (no genai_config.json)", model_dir,
                               "pass the folder written by 'python -m onnxruntime_genai.models.builder'")
        try:
            with open(config_path, encoding="utf-8") as f:
                self.config = json.load(f)
            decoder = self.config["model"]["decoder"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaptureError(f"genai_config.json is unreadable or has no model.decoder ({exc})", config_path) \
                from None
        if "filename" not in decoder:
            raise CaptureError("this GenAI model is a pipeline of several ONNX models", config_path,
                               "capture each component separately with 'parity capture onnx COMPONENT.onnx'")
        others = sorted(f for f in os.listdir(model_dir) if f.endswith(".onnx") and f != decoder["filename"])
        if others:
            raise CaptureError(f"this folder holds a composite model ({decoder['filename']}, {', '.join(others)})",
                               model_dir, "capture each component separately with 'parity capture onnx FILE.onnx'")
        if prompt_feed not in ("auto", "token"):
            raise CaptureError(f"unknown prompt feed {prompt_feed!r}", hint="use auto or token")
        self.prompt_feed = prompt_feed
        self.model_dir = model_dir
        self.model_file = os.path.join(model_dir, decoder["filename"])
        self.intermediates = intermediates
        self.include_ops, self.exclude_ops, self.name_regex = include_ops, exclude_ops, name_regex
        self.rename_items = list(GENAI_BUILDER_RENAMES if rename is None else rename)
        self.rename = load_rename_rules(self.rename_items)
        self.reference_sites = reference_sites
        self.scratch_dir = scratch_dir
        self.packages = installed_genai()

    # -- the two backend hooks -----------------------------------------------------------------------------------

    def _describe(self) -> dict:
        import onnxruntime_genai as og
        decoder = self.config["model"]["decoder"]
        providers = [next(iter(p)) for p in decoder.get("session_options", {}).get("provider_options", [])
                     if isinstance(p, dict) and p]
        header = load_graph_only(self.model_file)
        logits = [o for o in header.graph.output if o.name == "logits"]
        elem = logits[0].type.tensor_type.elem_type if logits else 0
        import onnx
        return {
            "model": {"path": self.model_dir, "hash": file_sha256(self.model_file),
                      "hash_method": f"sha256 of {decoder['filename']} (graph; external data not hashed)",
                      "type": self.config["model"].get("type", "")},
            "framework": {"name": "onnxruntime-genai", "version": og.__version__, "packages": self.packages},
            "device": {"type": providers[0] if providers else "cpu",
                       "name": ", ".join(self.packages) or "onnxruntime-genai", "index": None},
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "",
            "capture": {"execution_provider": providers[0] if providers else "cpu",
                        "execution_provider_source": "the installed onnxruntime-genai package and "
                                                     "genai_config.json's provider_options",
                        "intermediates": self.intermediates, "rename": self.rename_items},
        }

    def _capture_impl(self, inputs: InputSet, sink: RecordSink, options: CaptureOptions, progress) -> dict:
        import onnxruntime_genai as og
        samples = inputs.samples[:options.max_samples] if options.max_samples else inputs.samples
        if not samples:
            raise CaptureError("the input set has no samples", inputs.path)
        adjustments = InputAdjustments()
        prompts = [self._prompt(s.arrays, inputs.path, i, adjustments) for i, s in enumerate(samples)]
        forced = reference_tokens(options.reference, inputs, len(samples)) if options.mode == "teacher-forced" else None
        steps = 1 if options.mode == "forward" else options.max_new_tokens
        if forced is not None:
            steps = min(steps, min(len(t) for t in forced))
        self._check_context(prompts, steps, inputs.path)
        scratch, plan = None, []
        try:
            folder = self.model_dir
            if self.intermediates:
                scratch, plan = self._injected_copy()
                folder = scratch
            try:
                model = og.Model(folder)
            except Exception as exc:
                raise CaptureError(f"ORT GenAI cannot load the model: {str(exc).splitlines()[0]}", self.model_dir) \
                    from None
            fallback_used = False
            for i, prompt in enumerate(prompts):
                fed, argmax, fell_back = self._run_sample(og, model, i, prompt, steps,
                                                          forced[i] if forced else None, plan, sink, options,
                                                          progress)
                fallback_used |= fell_back
                if options.mode != "forward":
                    sink.put_array(f"generated_tokens.s{i}", np.asarray(fed, dtype=np.int64))
                    if forced is not None:
                        sink.put_array(f"argmax_tokens.s{i}", np.asarray(argmax, dtype=np.int64))
            capture = {"steps": steps, "stop_at_eos": False, "device_type": str(getattr(model, "device_type", "")),
                       "prompt_logits": "one token at a time (the build returns fewer positions than the prompt)"
                       if fallback_used else "whole prompt at once",
                       "injected_outputs": len(plan), **adjustments.to_manifest()}
            if forced is not None:
                capture["reference"] = os.path.abspath(options.reference)
            del model
            return {"capture": capture}
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    # -- generation --------------------------------------------------------------------------------------------

    def _run_sample(self, og, model, sample: int, prompt: np.ndarray, steps: int, forced, plan, sink: RecordSink,
                    options: CaptureOptions, progress):
        """Prefill then decode one sample; returns (fed tokens, own argmax tokens, whether the fallback ran)."""
        length = prompt.shape[1]
        # the prefill appends the whole prompt and each later step one token: exactly this many positions, since
        # GenAI refuses a max_length over the model's context_length even when the run would never reach it
        positions = length + max(steps, 1) - 1
        gen = self._generator(og, model, positions)
        gen.append_tokens(prompt)
        outputs = {"logits": gen.get_output("logits")}
        for name, *_ in plan:
            outputs[name] = gen.get_output(name)
        fell_back = self.prompt_feed == "token" or outputs["logits"].ndim != 3 or outputs["logits"].shape[1] != length
        if fell_back:
            log.info("the build returned logits of shape %s for a %d-token prompt: feeding it token by token",
                     outputs["logits"].shape, length)
            del gen
            gen = self._generator(og, model, positions)
            outputs = self._token_by_token(gen, prompt, ["logits"] + [p[0] for p in plan])
        fed, argmax = [], []
        for step in range(steps):
            if step > 0:
                gen.append_tokens(np.array([[fed[-1]]], dtype=np.int32))
                outputs = {"logits": gen.get_output("logits")}
                for name, *_ in plan:
                    outputs[name] = gen.get_output(name)
            self._record_step(sink, options, sample, step, outputs, plan)
            own = int(np.argmax(outputs["logits"][0, -1]))
            argmax.append(own)
            fed.append(int(forced[step]) if forced is not None else own)
            if progress is not None:
                progress.advance()
        return fed, argmax, fell_back

    @staticmethod
    def _generator(og, model, max_length: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(model, params)

    @staticmethod
    def _token_by_token(gen, prompt: np.ndarray, names: list[str]) -> dict:
        """Feed the prompt one token at a time; concatenate each output's per-token slices along dim 1."""
        parts: dict[str, list] = {n: [] for n in names}
        for t in range(prompt.shape[1]):
            gen.append_tokens(prompt[:, t:t + 1])
            for n in names:
                parts[n].append(gen.get_output(n))
        out = {}
        for n, arrays in parts.items():
            if all(a.ndim >= 2 and a.shape[1] == 1 for a in arrays):
                out[n] = np.concatenate(arrays, axis=1)
            else:  # not per position (e.g. a fixed-size state): the last token's value
                out[n] = arrays[-1]
        return out

    def _record_step(self, sink, options, sample, step, outputs: dict, plan) -> None:
        logits = outputs["logits"]
        recorded_logits = False
        calls: dict[str, int] = {}  # two values mapped to one site (rename rules) are calls 0, 1... as in ONNX
        for name, sites, meta, op in plan:
            for site in sites:
                call = calls.get(site, 0)
                calls[site] = call + 1
                put_numpy_record(sink, options.policy.decide(site), RecordKey(sample, step, site, call),
                                 outputs[name], module_type=op, meta=meta)
            recorded_logits |= name == "logits"
        if not recorded_logits:
            site = ":out.logits"
            put_numpy_record(sink, options.policy.decide(site), RecordKey(sample, step, site, 0), logits,
                             module_type="logits", meta={"onnx_value": "logits"})

    # -- inputs ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _prompt(arrays: dict, path, index: int, adjustments: InputAdjustments) -> np.ndarray:
        if "input_ids" not in arrays:
            raise CaptureError(f"sample {index} has no 'input_ids' (it has {', '.join(sorted(arrays))})", path,
                               "build the input set with 'parity inputs' from text or token ids")
        # the generator API takes token ids only and makes its own mask and positions (all ones, 0..L-1): the
        # standard inputs are left out when they say the same, refused when they say more (padding, offsets)
        adjustments.add(fit_inputs(arrays, {"input_ids": None}, sample=index, path=path,
                                   other_remedy=GENAI_REMEDY))
        ids = np.asarray(arrays["input_ids"])
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
            raise CaptureError(f"input_ids of sample {index} has shape {ids.shape}; GenAI capture takes one "
                               f"sequence per sample ([1, L])", path)
        return ids.astype(np.int32)

    def _check_context(self, prompts: list[np.ndarray], steps: int, path) -> None:
        """Refuse samples longer than the model's context (the generator would stop with a bare RuntimeError)."""
        context = self.config["model"].get("context_length")
        if not isinstance(context, int) or context < 1:
            return
        for index, prompt in enumerate(prompts):
            needed = prompt.shape[1] + max(steps, 1) - 1
            if needed > context:
                decode = f" + {steps - 1} decode steps" if steps > 1 else ""
                raise CaptureError(f"sample {index} needs {needed} positions ({prompt.shape[1]} prompt tokens{decode}),"
                                   f" more than the model's context_length of {context} (genai_config.json)", path,
                                   f"build the input set with samples of at most {context - max(steps, 1) + 1} "
                                   f"tokens (e.g. 'parity inputs text MODEL -n {context - max(steps, 1) + 1}')"
                                   + (" or ask for fewer --max-new-tokens" if steps > 1 else ""))

    # -- intermediates ---------------------------------------------------------------------------------------------

    def _injected_copy(self):
        """A scratch copy of the model folder whose model file also outputs the selected values.

        Returns:
            (scratch folder, plan of (value name, sites, meta, op type) in execution order).
        """
        injected = inject_outputs(self.model_file, include_ops=self.include_ops, exclude_ops=self.exclude_ops,
                                  name_regex=self.name_regex, scratch_root=self.scratch_dir)
        try:
            for entry in os.listdir(self.model_dir):
                src = os.path.join(self.model_dir, entry)
                dst = os.path.join(injected.folder, entry)
                if os.path.isfile(src) and not os.path.exists(dst) and not entry.endswith(".onnx"):
                    shutil.copyfile(src, dst)  # genai_config.json, tokenizer files (small)
        except OSError as exc:
            injected.cleanup()
            raise CaptureError(f"cannot copy the model folder ({exc.strerror})", injected.folder) from None
        producers = {}
        for order, node in enumerate(injected.graph.node):
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            for value in node.output:
                producers[value] = (order, node.name, op)
        values = list(injected.values)  # the KV-cache outputs are graph outputs already, so never injected
        names = [v.name for v in values] + ["logits"]
        reference = reference_sites_of(self.reference_sites) if self.reference_sites else None
        mapping = map_value_sites(injected.graph, names, injected.graph_outputs, rename=self.rename,
                                  reference_sites=reference, elem_types={v.name: v.elem_type for v in values})
        plan = []
        for name in names:
            order, node, op = producers.get(name, (-1, "", ""))
            meta = {"onnx_value": name, "onnx_node": node, "op_type": op, "order": order,
                    "scope": mapping[name].scope, "mapped": mapping[name].mapped}
            plan.append((order, name, mapping[name].sites, meta, op))
        plan.sort(key=lambda p: p[0])
        return injected.folder, [(name, sites, meta, op) for _, name, sites, meta, op in plan]

