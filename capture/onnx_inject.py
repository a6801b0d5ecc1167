"""ONNX graph-output injection: expose intermediate values as graph outputs in a scratch copy of a model.

The user's model is never modified: the edited graph is written to a scratch folder, next to links (or copies) of
its external-data files, because ONNX Runtime resolves external data relative to the model file. Models with
external data (the only way past protobuf's 2 GB limit) are shape-inferred by path and loaded without their
tensor data, so no weight is ever held in a protobuf message.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from protocol import CaptureError

log = logging.getLogger(__name__)

#: Newest IR version the bundled ONNX Runtime (1.31) accepts; onnx.helper.make_model defaults to newer ones.
MAX_ORT_IR_VERSION = 11
#: Ops whose outputs are never injected: their values are constants, not computation.
CONSTANT_OPS = frozenset({"Constant"})
#: Element types ``InferenceSession.run`` cannot return ("No corresponding Numpy type"): injecting one makes every
#: run fail, so such values are left out (with a warning) rather than captured.
NUMPY_UNREADABLE_TYPES = frozenset({TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ,
                                    TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ})
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE,
                         TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                         TensorProto.FLOAT8E5M2FNUZ})


@dataclass
class InjectedValue:
    """One value exposed as a graph output.

    Attributes:
        name: the ONNX value name; node: the producing node's name; op_type: its op type (with domain when not
            the default one); order: the node's index in the (topologically sorted) graph.
        elem_type: ONNX element type (0 when shape inference could not type it).
    """

    name: str
    node: str
    op_type: str
    order: int
    elem_type: int = 0


@dataclass
class InjectedModel:
    """The edited copy of a model.

    Attributes:
        path: the scratch model file to run; folder: its scratch folder (removed by ``cleanup``).
        values: the injected values in execution (topological) order.
        graph_outputs: the model's own outputs, in order.
        graph: the edited graph proto (external data not loaded), used for name mapping.
        external_data: external-data files linked next to the scratch model.
    """

    path: str
    folder: str
    values: list[InjectedValue]
    graph_outputs: list[str]
    graph: onnx.GraphProto
    external_data: list[str] = field(default_factory=list)
    owns_folder: bool = True

    def cleanup(self) -> None:
        """Remove the scratch folder (links and the edited model; never the user's files)."""
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of every external-data file the model's initializers reference."""
    found: list[str] = []
    for tensor in _all_initializers(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in found:
                    found.append(entry.value)
    return found


def _all_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_initializers(g)


def load_graph_only(path: str) -> onnx.ModelProto:
    """Load a model's graph without its external tensor data.

    Raises:
        CaptureError: the file is missing or not an ONNX model.
    """
    if not os.path.isfile(path):
        raise CaptureError("ONNX model not found", path, "pass the path of a .onnx file")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CaptureError(f"not a readable ONNX model ({reason})", path,
                           "check that the file is a complete .onnx model") from None


def link_external_data(src_dir: str, dst_dir: str, locations: list[str]) -> None:
    """Make each external-data file reachable from ``dst_dir`` under its relative location.

    A hard link when both folders share a filesystem (ONNX Runtime resolves symlinks and refuses data outside the
    model's folder, so a symlink does not work), a copy otherwise (slow for big models, but correct).

    Raises:
        CaptureError: a referenced data file is missing or escapes the model's folder.
    """
    for loc in locations:
        src = os.path.normpath(os.path.join(src_dir, loc))
        if os.path.isabs(loc) or not src.startswith(os.path.normpath(src_dir) + os.sep):
            raise CaptureError(f"external data location {loc!r} is outside the model's folder", src_dir,
                               "keep external data files beside the model")
        if not os.path.exists(src):
            raise CaptureError(f"external data file {loc!r} is missing", src_dir,
                               "copy the model together with its data files")
        dst = os.path.join(dst_dir, loc)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            log.warning("copying external data %s into the scratch folder (no hard link possible)", loc)
            shutil.copyfile(src, dst)


def infer_shapes(model_path: str, scratch: str, has_external: bool) -> onnx.ModelProto:
    """Shape-infer a model; by path when it has external data (models past 2 GB), in memory otherwise.

    Inference failures are not fatal: ONNX Runtime accepts untyped outputs, so the graph is used as it is.
    """
    if has_external:
        inferred = os.path.join(scratch, ".inferred.onnx")
        try:
            onnx.shape_inference.infer_shapes_path(model_path, inferred)
            return onnx.load(inferred, load_external_data=False)
        except Exception as exc:
            log.warning("shape inference by path failed (%s); outputs stay untyped", str(exc).splitlines()[0])
            return onnx.load(model_path, load_external_data=False)
        finally:
            if os.path.exists(inferred):
                os.unlink(inferred)
    model = onnx.load(model_path, load_external_data=False)
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        log.warning("shape inference failed (%s); outputs stay untyped", str(exc).splitlines()[0])
        return model


def select_values(graph: onnx.GraphProto, *, include_ops=None, exclude_ops=None,
                  name_regex: str | None = None) -> list[InjectedValue]:
    """The node outputs to expose, in graph (topological) order.

    Never constants (``Constant`` nodes), initializers, graph inputs or values already graph outputs (those are
    captured anyway). ``include_ops``/``exclude_ops`` filter by op type; ``name_regex`` is searched in the value
    name and the node name.
    """
    try:
        rx = re.compile(name_regex) if name_regex else None
    except re.error as exc:
        raise CaptureError(f"invalid --name-regex {name_regex!r}: {exc}") from None
    include = set(include_ops or ()) or None
    exclude = set(exclude_ops or ())
    skip = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info if vi.type.HasField("tensor_type")}
    chosen: list[InjectedValue] = []
    unreadable = 0
    for order, node in enumerate(graph.node):
        if node.op_type in CONSTANT_OPS or node.op_type in exclude:
            continue
        if include is not None and node.op_type not in include:
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        for value in node.output:
            if not value or value in skip:
                continue
            if rx is not None and not (rx.search(value) or rx.search(node.name)):
                continue
            if types.get(value, 0) in NUMPY_UNREADABLE_TYPES:
                unreadable += 1
                continue
            chosen.append(InjectedValue(value, node.name, op, order, types.get(value, 0)))
    if unreadable:
        log.warning("%d bfloat16/float8 intermediate value(s) not captured: ONNX Runtime's Python API cannot hand "
                    "them over as numpy arrays (capture the float32 or float16 build to see them)", unreadable)
    return chosen


def inject_outputs(model_path: str, *, include_ops=None, exclude_ops=None, name_regex: str | None = None,
                   intermediates: bool = True, scratch_root: str | None = None) -> InjectedModel:
    """Write a copy of ``model_path`` whose graph also outputs the selected intermediate values.

    Args:
        model_path: the user's .onnx file (read only).
        include_ops, exclude_ops, name_regex: filters (see ``select_values``).
        intermediates: False exposes nothing extra (final outputs only).
        scratch_root: where to create the scratch folder (default: a hidden folder beside a model with external
            data, so its data files can be hard-linked; the system temp folder otherwise).

    Returns:
        The InjectedModel; call ``cleanup()`` when done.

    Raises:
        CaptureError: the model cannot be read, its external data is missing, or the scratch folder is unwritable.
    """
    model_path = os.path.abspath(model_path)
    header = load_graph_only(model_path)
    locations = external_data_files(header)
    if scratch_root is None and locations and os.access(os.path.dirname(model_path), os.W_OK):
        # same filesystem as the data, so hard links work and nothing is copied
        scratch_root = os.path.dirname(model_path)
    try:
        scratch = tempfile.mkdtemp(prefix=".parity-scratch-", dir=scratch_root)
    except OSError as exc:
        raise CaptureError(f"cannot create a scratch folder ({exc.strerror})", scratch_root or tempfile.gettempdir(),
                           "free some space or pass another scratch folder") from None
    try:
        link_external_data(os.path.dirname(model_path), scratch, locations)
        model = infer_shapes(model_path, scratch, bool(locations))
        values = select_values(model.graph, include_ops=include_ops, exclude_ops=exclude_ops,
                               name_regex=name_regex) if intermediates else []
        known = {vi.name: vi for vi in model.graph.value_info}
        for v in values:
            vi = known.get(v.name)
            out = model.graph.output.add()
            if vi is not None:
                out.CopyFrom(vi)
            else:  # untyped: ONNX Runtime still accepts it as an output
                out.name = v.name
        if model.ir_version > MAX_ORT_IR_VERSION:
            log.info("lowering IR version %d to %d for ONNX Runtime", model.ir_version, MAX_ORT_IR_VERSION)
            model.ir_version = MAX_ORT_IR_VERSION
        path = os.path.join(scratch, os.path.basename(model_path))
        # the graph holds only references to the external data, so this never serializes a weight
        onnx.save(model, path)
        return InjectedModel(path, scratch, values, [o.name for o in header.graph.output], model.graph, locations)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise CaptureError(f"cannot write the edited model ({exc.strerror})", scratch,
                           "free some space or pass another scratch folder") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
