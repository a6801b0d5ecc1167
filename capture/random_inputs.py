"""Random input sets drawn from an ONNX model's input spec: named dims, value ranges, a seed.

Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so a sample does not depend on how many samples
were asked for, and the same command gives the same input set (the same sha256) on every host.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from protocol import CaptureError, InputSample, write_input_set

# ONNX TensorProto element types -> numpy (no bfloat16/fp8: numpy cannot hold them as inputs)
_ELEM_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
DEFAULT_INT_RANGE = (0, 100)
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype and shape (ints, or dim names for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple


@dataclass
class RandomInputOptions:
    """How to draw: dim sizes by name, value ranges by input name, seed, number of samples."""

    dims: dict[str, int] = field(default_factory=dict)
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    float_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0
    samples: int = 1


def read_input_specs(model_path: str) -> list[InputSpec]:
    """The model's inputs (initializers excluded), read without loading external data.

    Raises:
        CaptureError: the model cannot be read, or an input has a type numpy cannot hold.
    """
    from .onnx_backend import resolve_model_file
    from .onnx_inject import load_graph_only
    path = resolve_model_file(model_path)
    graph = load_graph_only(path).graph
    initializers = {t.name for t in graph.initializer}
    specs = []
    for vi in graph.input:
        if vi.name in initializers:
            continue
        tensor = vi.type.tensor_type
        dtype = _ELEM_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise CaptureError(f"input {vi.name!r} has ONNX element type {tensor.elem_type}, which cannot be drawn",
                               path)
        shape = []
        for i, d in enumerate(tensor.shape.dim):
            shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{vi.name}.dim{i}"))
        specs.append(InputSpec(vi.name, np.dtype(dtype), tuple(shape)))
    return specs


def concrete_shape(spec: InputSpec, dims: dict[str, int]) -> tuple[int, ...]:
    """The spec's shape with its named dims replaced by their sizes (KeyError for an unset name)."""
    return tuple(d if isinstance(d, int) else dims[d] for d in spec.shape)


def draw_samples(specs: list[InputSpec], options: RandomInputOptions, model_path: str = "") -> list[InputSample]:
    """Draw ``options.samples`` samples for ``specs``.

    Integer inputs are uniform in ``[lo, hi)`` (``--int-range NAME=LO:HI``; default 0:100), float inputs uniform
    in ``[lo, hi)`` (default -1:1), booleans fair coins.

    Raises:
        CaptureError: a dynamic dim without a size (all of them named), a range for an unknown input, a bad range.
    """
    names = {s.name for s in specs}
    unknown = sorted((set(options.int_ranges) | set(options.float_ranges)) - names)
    if unknown:
        raise CaptureError(f"value range given for {', '.join(unknown)}, which the model does not take "
                           f"(its inputs: {', '.join(sorted(names))})", model_path or None)
    needed = sorted({d for s in specs for d in s.shape if not isinstance(d, int) or d <= 0}, key=str)
    missing = [str(d) for d in needed if d not in options.dims]
    if missing:
        raise CaptureError(f"dynamic dim(s) {', '.join(missing)} have no size", model_path or None,
                           "set each with --dim, e.g. " + " ".join(f"--dim {d}=1" for d in missing))
    unused = sorted(set(options.dims) - {d for s in specs for d in s.shape if isinstance(d, str)})
    if unused:
        raise CaptureError(f"--dim given for {', '.join(unused)}, which is not a dim of any input "
                           f"(named dims: {', '.join(map(str, needed)) or 'none'})", model_path or None)
    if options.samples < 1:
        raise CaptureError("--samples must be at least 1")
    samples = []
    for index in range(options.samples):
        rng = np.random.default_rng([options.seed, index])
        arrays = {}
        for spec in specs:
            shape = concrete_shape(spec, options.dims)
            arrays[spec.name] = _draw(rng, spec, shape, options, model_path)
        samples.append(InputSample(arrays, {"seed": options.seed, "index": index}))
    return samples


def _draw(rng, spec: InputSpec, shape, options: RandomInputOptions, model_path: str) -> np.ndarray:
    kind = spec.dtype.kind
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if kind in "iu":
        lo, hi = options.int_ranges.get(spec.name, DEFAULT_INT_RANGE)
        info = np.iinfo(spec.dtype)
        if not (info.min <= lo < hi <= info.max + 1):
            raise CaptureError(f"--int-range for {spec.name} must satisfy LO < HI within {spec.dtype.name}",
                               model_path or None)
        return rng.integers(lo, hi, size=shape, dtype=np.int64).astype(spec.dtype)
    lo, hi = options.float_ranges.get(spec.name, DEFAULT_FLOAT_RANGE)
    if not lo < hi:
        raise CaptureError(f"--float-range for {spec.name} must satisfy LO < HI", model_path or None)
    return rng.uniform(lo, hi, size=shape).astype(spec.dtype)


def write_random_inputs(model_path: str, output: str, options: RandomInputOptions) -> tuple[str, list[InputSpec]]:
    """Draw random samples for an ONNX model's inputs and write them as an input set.

    Returns:
        (the input set's sha256, the specs used).

    Raises:
        CaptureError / ParityError: see ``draw_samples`` and ``protocol.write_input_set``.
    """
    specs = read_input_specs(model_path)
    samples = draw_samples(specs, options, model_path)
    provenance = {"source": "random", "model": os.path.abspath(model_path), "seed": options.seed,
                  "samples": options.samples, "dims": options.dims,
                  "int_ranges": {k: list(v) for k, v in options.int_ranges.items()},
                  "float_ranges": {k: list(v) for k, v in options.float_ranges.items()},
                  "generator": "numpy.random.default_rng([seed, sample index])"}
    return write_input_set(output, samples, provenance), specs


def parse_range(text: str, kind: type) -> tuple[str, tuple]:
    """Parse ``NAME=LO:HI`` into ``(name, (lo, hi))`` with values of ``kind`` (int or float).

    Raises:
        ValueError: malformed text.
    """
    name, sep, rng = text.partition("=")
    lo, sep2, hi = rng.partition(":")
    if not (sep and sep2 and name):
        raise ValueError(f"invalid range {text!r}; write NAME=LO:HI, e.g. input_ids=0:32000")
    try:
        return name, (kind(lo), kind(hi))
    except ValueError:
        raise ValueError(f"invalid range {text!r}: LO and HI must be {kind.__name__}s") from None


def parse_dim(text: str) -> tuple[str, int]:
    """Parse ``NAME=SIZE`` (``batch=1``).

    Raises:
        ValueError: malformed text or a size below 1.
    """
    name, sep, size = text.partition("=")
    try:
        value = int(size)
    except ValueError:
        value = 0
    if not sep or not name or value < 1:
        raise ValueError(f"invalid dim {text!r}; write NAME=SIZE with SIZE >= 1, e.g. sequence=128")
    return name, value
