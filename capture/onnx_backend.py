"""ONNX capture backend: run an output-injected copy of a model with ONNX Runtime and record every value.

Records carry the ONNX value name, the producing node, its op type (as the record's module type) and the node's
position in the graph's topological order; sites come from capture/onnx_names.py so that the dump pairs with a
PyTorch dump of the same model.
"""
from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from protocol import CaptureError, InputSet, RecordKey
from protocol.backends import check_options

from .base import CaptureBackend, CaptureOptions
from .onnx_inject import InjectedModel, inject_outputs, load_graph_only
from .onnx_names import load_rename_rules, map_value_sites, reference_sites_of
from .onnx_records import put_numpy_record
from .sink import RecordSink
from .standard_inputs import InputAdjustments, fit_inputs

log = logging.getLogger(__name__)

#: Short execution-provider names accepted by ``--ep``; a full ORT provider name is accepted as well.
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt-rtx": "NvTensorRTRTXExecutionProvider", "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider", "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider", "qnn": "QNNExecutionProvider",
    "dnnl": "DnnlExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "webgpu": "WebGpuExecutionProvider",
    "cann": "CANNExecutionProvider", "acl": "ACLExecutionProvider", "nnapi": "NnapiExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
}
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "layout", "all")
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
#: what else to do about an informative input (a padded mask...) that an exported graph does not take
EXPORT_REMEDY = "export the model with {name} among its inputs (torch.onnx.export(..., input_names=[..., '{name}']))"
INJECTION_NOTE = ("intermediate values were exposed as extra graph outputs; ONNX Runtime cannot fuse across an "
                  "exposed value, so final outputs may differ slightly (about 1e-6 in fp32) from an uninjected run")


def resolve_model_file(path: str) -> str:
    """The .onnx file to capture: ``path`` itself, or the single .onnx file of a folder.

    Raises:
        CaptureError: nothing there, no .onnx file in the folder, or a composite folder (several .onnx files,
            e.g. an encoder and a decoder): each component must be captured separately.
    """
    if os.path.isdir(path):
        models = sorted(f for f in os.listdir(path) if f.endswith(".onnx"))
        if not models:
            raise CaptureError("no .onnx file in this folder", path, "pass the path of an ONNX model")
        if len(models) > 1:
            raise CaptureError(f"this folder holds a composite model of {len(models)} ONNX files "
                               f"({', '.join(models)})", path,
                               f"capture each component separately, e.g. 'parity capture onnx "
                               f"{os.path.join(path, models[0])} ...'")
        return os.path.join(path, models[0])
    if not os.path.exists(path):
        raise CaptureError("ONNX model not found", path, "pass the path of a .onnx file or of its folder")
    return path


def provider_name(ep: str) -> str:
    """The ORT provider name for a short name (``cuda``) or a full one (``CUDAExecutionProvider``).

    Raises:
        CaptureError: a name that is neither.
    """
    if ep in EXECUTION_PROVIDERS.values():
        return ep
    name = EXECUTION_PROVIDERS.get(ep.lower())
    if name is None:
        raise CaptureError(f"unknown execution provider {ep!r}",
                           hint=f"use one of {', '.join(sorted(EXECUTION_PROVIDERS))} or a full ORT provider name")
    return name


def check_provider(ep: str) -> str:
    """The provider name for ``ep`` if this onnxruntime build has it.

    Raises:
        CaptureError: the provider is not in this build; the message lists the ones that are.
    """
    import onnxruntime as ort
    name = provider_name(ep)
    available = ort.get_available_providers()
    if name not in available:
        raise CaptureError(f"execution provider {name} ({ep}) is not available in this onnxruntime build "
                           f"(available: {', '.join(available)})",
                           hint="install the onnxruntime package built for it (e.g. onnxruntime-gpu for cuda, "
                                "onnxruntime-directml for dml) or choose an available one")
    return name


def file_sha256(path: str) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxBackend(CaptureBackend):
    """Capture an ONNX model's intermediate values with ONNX Runtime.

    Args:
        model_path: the .onnx file (or a folder holding exactly one).
        ep: execution provider (``cpu``, ``cuda``, ``dml``, ``tensorrt``, ``rocm``, ``coreml``, ``openvino``...).
        provider_options: options passed to that provider (e.g. ``{"device_id": "0"}``).
        graph_optimization: ``disable`` | ``basic`` | ``extended`` | ``layout`` | ``all`` (recorded).
        include_ops, exclude_ops: op types to capture / leave out; name_regex: searched in value and node names.
        intermediates: False records the graph outputs only.
        rename: rename rules (``OLD=NEW`` or ``@FILE``) applied to module paths.
        reference: a dump (e.g. the PyTorch one) whose site forms single-output scopes take.
        scratch_dir: where the edited model is written (removed afterwards).
    """

    method = "onnx-output-injection"

    @classmethod
    def open(cls, model: str, *, device: str | None = None, dtype: str | None = None, provider: str | None = None,
             attn_implementation: str | None = None, device_map: str | None = None, max_memory: str | None = None,
             offload_folder: str | None = None) -> "OnnxBackend":
        """The registry's factory (protocol/backends.py): the execution provider is ``provider``, else ``cuda`` for
        a cuda device and ``cpu`` otherwise.

        Raises:
            CaptureError: a dtype, attention choice or device map (the graph fixes the first two, and ONNX
                Runtime places the whole graph on its provider), or what the constructor raises.
        """
        check_options("onnx", device=device, dtype=dtype, provider=provider, attn_implementation=attn_implementation,
                      device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        return cls(model, ep=provider or ("cuda" if (device or "").startswith("cuda") else "cpu"))

    def __init__(self, model_path: str, ep: str = "cpu", provider_options: dict | None = None,
                 graph_optimization: str = "all", include_ops=None, exclude_ops=None, name_regex: str | None = None,
                 intermediates: bool = True, rename=None, reference: str | None = None,
                 scratch_dir: str | None = None):
        self.model_path = os.path.abspath(resolve_model_file(os.fspath(model_path)))
        self.provider = check_provider(ep)
        self.ep = ep
        self.provider_options = {str(k): str(v) for k, v in (provider_options or {}).items()}
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise CaptureError(f"unknown graph optimization level {graph_optimization!r}",
                               hint=f"use one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
        self.graph_optimization = graph_optimization
        self.include_ops = list(include_ops or [])
        self.exclude_ops = list(exclude_ops or [])
        self.name_regex = name_regex
        self.intermediates = intermediates
        self.rename_items = list(rename or [])
        self.rename = load_rename_rules(self.rename_items)
        self.reference = reference
        self.scratch_dir = scratch_dir
        self._header = load_graph_only(self.model_path)

    # -- the two backend hooks -----------------------------------------------------------------------------------

    def _describe(self) -> dict:
        import onnx
        import onnxruntime as ort
        outputs = self._header.graph.output
        elem = outputs[0].type.tensor_type.elem_type if outputs else 0
        return {
            "model": {"path": self.model_path, "hash": file_sha256(self.model_path),
                      "hash_method": "sha256 of the .onnx file (graph; external data not hashed)",
                      "producer": self._header.producer_name, "ir_version": self._header.ir_version,
                      "opsets": {o.domain or "ai.onnx": o.version for o in self._header.opset_import}},
            "framework": {"name": "onnxruntime", "version": ort.__version__, "onnx": onnx.__version__},
            "device": {"type": self.ep.lower(), "name": self.provider,
                       "index": self.provider_options.get("device_id")},
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "",
            "capture": {"execution_provider": self.provider, "provider_options": self.provider_options,
                        "graph_optimization": self.graph_optimization,
                        "filters": {"include_ops": self.include_ops, "exclude_ops": self.exclude_ops,
                                    "name_regex": self.name_regex, "intermediates": self.intermediates},
                        "rename": self.rename_items, "injection_note": INJECTION_NOTE},
        }

    def _capture_impl(self, inputs: InputSet, sink: RecordSink, options: CaptureOptions, progress) -> dict:
        if options.mode != "forward":
            raise CaptureError(f"mode {options.mode} needs a generation loop, which a plain ONNX graph does not have",
                               self.model_path, "use 'parity capture genai' for ORT GenAI model folders")
        samples = inputs.samples[:options.max_samples] if options.max_samples else inputs.samples
        injected = inject_outputs(self.model_path, include_ops=self.include_ops, exclude_ops=self.exclude_ops,
                                  name_regex=self.name_regex, intermediates=self.intermediates,
                                  scratch_root=self.scratch_dir)
        try:
            session = self.session(injected.path)
            plan = self._plan(injected)
            names = [name for name, *_ in plan]
            adjustments = InputAdjustments()
            for index, sample in enumerate(samples):
                feeds = session_feeds(session, sample.arrays, inputs.path, index, adjustments)
                try:
                    results = session.run(names, feeds)
                except Exception as exc:  # onnxruntime raises its own exception types
                    raise CaptureError(f"ONNX Runtime failed on sample {index}: {_first_line(exc)}",
                                       self.model_path) from None
                calls: dict[str, int] = {}
                for (name, sites, meta, op_type), value in zip(plan, results):
                    if not isinstance(value, np.ndarray):
                        continue  # sequences and maps are not tensors
                    for site in sites:
                        call = calls.get(site, 0)
                        calls[site] = call + 1
                        put_numpy_record(sink, options.policy.decide(site), RecordKey(index, 0, site, call), value,
                                         module_type=op_type, meta=meta)
                if progress is not None:
                    progress.advance()
            extra: dict = {"capture": {"injected_outputs": len(injected.values),
                                       "mapped_values": sum(1 for _, s, m, _ in plan if m.get("mapped")),
                                       "execution_order": "topological order of the ONNX graph",
                                       **adjustments.to_manifest()}}
            if options.check_perturbation and samples:
                extra["perturbation_check"] = self._perturbation_check(session, samples[0].arrays, inputs.path,
                                                                       injected.graph_outputs)
            return extra
        finally:
            injected.cleanup()

    # -- helpers ------------------------------------------------------------------------------------------------

    def session(self, path: str):
        """An InferenceSession on this backend's provider and optimization level.

        Raises:
            CaptureError: ONNX Runtime refuses the model, or the provider could not be initialised.
        """
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT",
                              ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.graph_optimization]
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(path, opts, providers=[self.provider],
                                           provider_options=[self.provider_options])
        except Exception as exc:
            text = _first_line(exc)
            hint = ("the model's IR version is newer than this onnxruntime supports; upgrade onnxruntime"
                    if "IR version" in text else "check that ONNX Runtime can run this model")
            raise CaptureError(f"ONNX Runtime cannot load the model: {text}", self.model_path, hint) from None
        if self.provider not in session.get_providers():
            raise CaptureError(f"ONNX Runtime fell back from {self.provider} to {', '.join(session.get_providers())}",
                               self.model_path, "check the provider's installation (drivers, libraries)")
        return session

    def _plan(self, injected: InjectedModel) -> list[tuple[str, list[str], dict, str]]:
        """(value name, sites, meta, op type) for every recorded value, in execution order."""
        producers = {}
        for order, node in enumerate(injected.graph.node):
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            for value in node.output:
                producers[value] = (order, node.name, op)
        types = {v.name: v.elem_type for v in injected.values}
        names = [v.name for v in injected.values] + [o for o in injected.graph_outputs]
        reference = reference_sites_of(self.reference) if self.reference else None
        mapping = map_value_sites(injected.graph, names, injected.graph_outputs, rename=self.rename,
                                  reference_sites=reference, elem_types=types)
        plan = []
        for name in names:
            order, node, op = producers.get(name, (-1, "", ""))
            sites = mapping[name]
            meta = {"onnx_value": name, "onnx_node": node, "op_type": op, "order": order,
                    "scope": sites.scope, "mapped": sites.mapped}
            plan.append((order, name, sites.sites, meta, op))
        plan.sort(key=lambda p: p[0])  # graph outputs move to their producer's place
        return [(name, sites, meta, op) for _, name, sites, meta, op in plan]

    def _perturbation_check(self, injected_session, arrays: dict, inputs_path, outputs: list[str]) -> dict:
        """Run the user's (uninjected) model once and compare its outputs with the injected run's, bit for bit."""
        plain = self.session(self.model_path)
        feeds = session_feeds(plain, arrays, inputs_path, 0)
        a = plain.run(outputs, feeds)
        b = injected_session.run(outputs, feeds)
        diffs = {name: float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
                 for name, x, y in zip(outputs, a, b)}
        identical = all(np.array_equal(x, y) for x, y in zip(a, b))
        return {"bit_identical": identical, "max_abs_diff": diffs, "compared": "sample 0, graph outputs"}


def session_feeds(session, arrays: dict, inputs_path, index: int,
                  adjustments: InputAdjustments | None = None) -> dict:
    """The feeds for one sample: every model input by name, dtypes checked (never silently cast).

    An input the model does not take is left out when it carries no information, and a model input the sample lacks
    is derived when it has a standard default (capture/standard_inputs.py); ``adjustments`` counts both.

    Raises:
        CaptureError: missing or extra inputs that the standard defaults do not cover, or a dtype that differs
            from the model's.
    """
    expected = {i.name: i.type for i in session.get_inputs()}
    fitted = fit_inputs(arrays, {name: _ORT_DTYPES.get(kind) for name, kind in expected.items()}, sample=index,
                        path=inputs_path, other_remedy=EXPORT_REMEDY)
    if adjustments is not None:
        adjustments.add(fitted)
    feeds = {}
    for name, kind in expected.items():
        array = np.asarray(fitted.arrays[name])
        want = _ORT_DTYPES.get(kind)
        if want is None:
            raise CaptureError(f"model input {name!r} has type {kind}, which numpy cannot feed", inputs_path)
        if array.dtype != want:
            raise CaptureError(f"input {name!r} of sample {index} is {array.dtype}, the model wants "
                               f"{np.dtype(want).name}", inputs_path,
                               "build the input set with the model's dtypes (inputs are never cast silently)")
        feeds[name] = array
    return feeds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_capture(backend: CaptureBackend, inputs_path: str, output: str, options: CaptureOptions, *,
                show_progress: bool | None = None):
    """Read an input set and capture it with ``backend`` into ``output``, with a progress bar over samples x steps.

    Returns:
        The CaptureSummary.

    Raises:
        ParityError: a bad input set, an existing output, or any capture error.
    """
    from protocol import read_input_set
    from common.console import progress
    if os.path.exists(output):
        raise CaptureError("a dump already exists under this name", output,
                           "choose another output name; tensorparity never overwrites a dump")
    inputs = read_input_set(inputs_path)
    count = min(len(inputs), options.max_samples or len(inputs))
    steps = 1 if options.mode == "forward" else max(options.max_new_tokens, 1)
    with progress(count * steps, f"capturing {options.label or 'dump'}", enabled=show_progress) as bar:
        return backend.capture(inputs, output, options, progress=bar)
