"""Write the golden files of the current protocol version, describe them, and list them for SPEC.md.

Golden files are written once per format version and committed; every later reader of the same MAJOR must keep
reading them (tests/protocol/test_golden.py). The script is deterministic: the manifest has fixed values (no clock,
no host name, a fixed producer version), so the same library writes the same bytes.

    python tests/data/golden/make_golden.py                 # write missing golden files of this version + contents
    python tests/data/golden/make_golden.py --out DIR       # write them somewhere else (tests do this)
    python tests/data/golden/make_golden.py --update-spec   # put the listing of the golden dump into SPEC.md
    python tests/data/golden/make_golden.py --list FILE     # print the listing of any HDF5 file
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from protocol import (  # noqa: E402
    FORMAT_VERSION, CallLogBuilder, DumpWriter, InputSample, Manifest, RecordKey, TensorStats, bfloat16_bits, compute_stats,
    open_dump, read_input_set, write_input_set,
)

SPEC = os.path.join(REPO, "protocol", "SPEC.md")
BEGIN, END = "<!-- golden-listing:begin -->", "<!-- golden-listing:end -->"
DUMP = f"dump-v{FORMAT_VERSION}.h5"
DUMP_LZ4 = f"dump-v{FORMAT_VERSION}-lz4.h5"
INPUTS = f"inputs-v{FORMAT_VERSION}.h5"
CONTENTS = f"contents-v{FORMAT_VERSION}.json"


def golden_samples() -> list[InputSample]:
    """The golden input set: two token windows, one with a 0-d scalar."""
    return [
        InputSample({"input_ids": np.array([[1, 17, 42, 7, 2]], np.int64),
                     "attention_mask": np.ones((1, 5), np.int64)}, {"score_from": 1, "text": "a golden window"}),
        InputSample({"input_ids": np.array([[3, 9]], np.int64), "attention_mask": np.array([[1, 0]], np.int64),
                     "temperature": np.array(0.5, np.float32)}, {"score_from": 0}),
    ]


def golden_manifest(inputs_sha256: str, **overrides) -> Manifest:
    """The golden dump's manifest: every field fixed."""
    kwargs = dict(
        run_id="golden", label="cpu-fp32", producer={"name": "tensorparity", "version": "golden"},
        created="2026-01-01T00:00:00+00:00", host="golden-host",
        model={"id": "golden-tiny", "hash": "0" * 64, "hash_method": "sha256-of-files"},
        framework={"name": "numpy", "version": "golden"}, device={"type": "cpu", "name": "cpu", "index": None},
        dtype="float32", capture={"method": "external", "mode": "generate", "policy": {"default": "full"}},
        inputs_sha256=inputs_sha256)
    kwargs.update(overrides)
    return Manifest(**kwargs)


def _k(site: str, *, sample: int = 0, step: int = 0, call: int = 0) -> RecordKey:
    return RecordKey(sample, step, site, call)


def write_golden_dump(path: str, inputs_sha256: str) -> None:
    """The golden dump: every dtype (bfloat16/fp8 as bit patterns), special values, 0-d, empty, statistics-only,
    slice and top-k records (with aux), a chunked record, a second call and a second step, an auxiliary array."""
    f64 = np.array([1.5, -0.0, np.nan, np.inf, -np.inf, 5e-324, -2.25e300], np.float64)
    f32 = np.array([[1.0, -2.0, 1e-45], [np.nan, 3.5, -0.0]], np.float32)
    f16 = np.array([0.5, -65504.0, 6e-8, np.inf], np.float16)
    bf16 = bfloat16_bits(np.array([1.0, -2.5, 3.14159, np.nan, -np.inf, 1e-40], np.float32))
    e4m3 = np.array([0x00, 0x80, 0x38, 0x7E, 0x7F, 0x01], np.uint8)  # 0, -0, 1, 448, NaN, smallest subnormal
    e5m2 = np.array([0x3C, 0x7C, 0xFC, 0x7E, 0x01], np.uint8)  # 1, inf, -inf, NaN, smallest subnormal
    full = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5
    logits = np.array([[0.1, 2.0, -1.0, 3.5, 0.0]], np.float32)
    with DumpWriter(path, golden_manifest(inputs_sha256), chunk_bytes=256) as w:
        w.add(_k(":in.input_ids"), np.array([[1, 17, 42, 7, 2]], np.int64), module_type="LlamaForCausalLM")
        w.add(_k("model.embed_tokens:out"), f64, module_type="Embedding")
        w.add(_k("model.layers.0:out.0"), f32, module_type="LlamaDecoderLayer", meta={"note": "nan, -0.0"})
        w.add(_k("model.layers.0.mlp:out"), f16, module_type="LlamaMLP")
        w.add(_k("model.layers.0.self_attn:out.0"), bf16, dtype="bfloat16", module_type="LlamaAttention")
        w.add(_k("model.layers.0.fp8_a:out"), e4m3, dtype="float8_e4m3fn")
        w.add(_k("model.layers.0.fp8_b:out"), e5m2, dtype="float8_e5m2")
        for name, arr in (("int8", np.array([-128, 127], np.int8)), ("int16", np.array([-32768, 1], np.int16)),
                          ("int32", np.array([-(2 ** 31), 5], np.int32)),
                          ("int64", np.array([-(2 ** 63), 2 ** 63 - 1], np.int64)),
                          ("uint8", np.array([0, 255], np.uint8)), ("uint16", np.array([65535], np.uint16)),
                          ("uint32", np.array([2 ** 32 - 1], np.uint32)),
                          ("uint64", np.array([0, 2 ** 64 - 1], np.uint64))):
            w.add(_k(f"ints.{name}:out"), arr)
        w.add(_k("model.mask:out"), np.array([[True, False], [False, True]]))
        w.add(_k("model.norm:out.scale"), np.array(3.25, np.float32), module_type="LlamaRMSNorm")
        w.add(_k("model.empty:out"), np.zeros((0, 4), np.float32))
        w.add(_k("model.chunked:out"), np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16))  # > chunk_bytes
        w.add_stats(_k("model.layers.1:out.0"), TensorStats(1024, -3.0, 4.0, 0.125, 1.5, 4.0, 48.5, 0, 0),
                    dtype="bfloat16", shape=(2, 8, 64), module_type="LlamaDecoderLayer")
        w.add(_k("model.layers.1.mlp:out"), full[:1], stats=compute_stats(full), storage="slice",
              reduction={"axis": 0, "start": 0, "stop": 1}, orig_shape=full.shape, module_type="LlamaMLP")
        w.add(_k(":out.logits"), np.array([[3.5, 2.0, 0.1]], np.float32), stats=compute_stats(logits),
              storage="topk", reduction={"axis": -1, "k": 3}, orig_shape=logits.shape,
              aux=np.array([[3, 1, 0]], np.int64), module_type="LlamaForCausalLM")
        w.add(_k("model.layers.0:out.0", call=1), f32 * 2, module_type="LlamaDecoderLayer")
        w.add(_k(":out.logits", step=1), logits, module_type="LlamaForCausalLM")
        w.add_array("generated_tokens.s0", np.array([3, 1], np.int64))
        w.set_calls(golden_calls())


def golden_calls() -> dict:
    """The golden dump's call structures (format 1.2): every node kind, a shared signature and an exception."""
    log = CallLogBuilder()
    log.add("", "golden.Model", 0, 0, 0, {"args": [], "kwargs": {"input_ids": {"tensor": "input_ids"},
                                                                   "use_cache": {"value": False}}})
    layer = {"args": [{"tensor": "args.0"}], "kwargs": {
        "position_embeddings": {"tuple": [{"tensor": "kwargs.position_embeddings.0"},
                                          {"tensor": "kwargs.position_embeddings.1"}]},
        "cache": {"cache": "DynamicCache", "fresh": True}, "dtype": {"dtype": "bfloat16"},
        "device": {"device": "cpu"}, "scale": {"value": 0.5}, "names": {"list": [{"value": "a"}, {"value": None}]},
        "options": {"dict": {"k": {"value": 1}}}, "config": {"opaque": "golden.Config"}}}
    carried = {"args": [{"tensor": "args.0"}], "kwargs": {"cache": {"cache": "DynamicCache", "fresh": False}}}
    log.add("model.layers.0", "golden.DecoderLayer", 0, 0, 0, layer)
    log.add("model.layers.0", "golden.DecoderLayer", 0, 0, 1, carried)
    log.add("model.layers.0", "golden.DecoderLayer", 0, 1, 0, layer)
    return log.document()


def write_golden_lz4_dump(path: str, inputs_sha256: str) -> None:
    """A small lz4-compressed golden dump (compression is recorded in the file)."""
    with DumpWriter(path, golden_manifest(inputs_sha256, label="cpu-fp32-lz4"), compression="lz4") as w:
        w.add(_k(":out.logits"), np.linspace(-4, 4, 64, dtype=np.float32).reshape(2, 32))
        w.add(_k("model.layers.0:out.0"), bfloat16_bits(np.linspace(0, 1, 16, dtype=np.float32)), dtype="bfloat16")


def make(out: str) -> list[str]:
    """Write the golden files of this version into ``out`` (existing ones are never replaced) and their contents.

    Returns:
        The names written.
    """
    os.makedirs(out, exist_ok=True)
    written = []
    inputs = os.path.join(out, INPUTS)
    if not os.path.exists(inputs):
        write_input_set(inputs, golden_samples(), {"dataset": "golden", "tokenizer": "none", "window": 5})
        written.append(INPUTS)
    sha = read_input_set(inputs).sha256
    for name, fn in ((DUMP, write_golden_dump), (DUMP_LZ4, write_golden_lz4_dump)):
        if not os.path.exists(os.path.join(out, name)):
            fn(os.path.join(out, name), sha)
            written.append(name)
    contents = os.path.join(out, CONTENTS)
    if not os.path.exists(contents):
        with open(contents, "w", encoding="utf-8") as fh:
            json.dump(describe_all(out), fh, indent=1, sort_keys=True)
            fh.write("\n")
        written.append(CONTENTS)
    return written


# -- describing a file through the public reader API (exact: hashes of the stored bits) ------------------------------

def _num(x: float):
    """JSON-comparable float: NaN and infinities as strings (NaN != NaN would defeat equality)."""
    x = float(x)
    return repr(x) if (math.isnan(x) or math.isinf(x)) else x


def _array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def describe_dump(path: str) -> dict:
    """What a reader sees in a dump: manifest, every record (stats, stored-bit hashes, checksums from 1.1), arrays."""
    with open_dump(path) as r:
        records = []
        for info in r.records():
            rec = {"key": str(info.key), "seq": info.seq, "module_type": info.module_type, "dtype": info.dtype,
                   "shape": list(info.shape), "orig_shape": list(info.orig_shape), "storage": info.storage,
                   "reduction": info.reduction, "meta": info.meta,
                   "stats": {k: _num(v) for k, v in info.stats.to_dict().items()}}
            if info.has_data:
                rec["raw"] = _array(r.read(info, raw=True))
                rec["values"] = _array(r.read(info))
                rec["blocks"] = _array(np.concatenate(list(r.iter_blocks(info, 5, raw=True))))
            if info.aux:
                rec["aux"] = _array(r.read_aux(info))
            if r.checksums:  # 1.1: the stored checksums are part of what a reader sees (keys absent before 1.1)
                rec["crc32c"] = {"data": info.data_crc32c, "aux": info.aux_crc32c}
            records.append(rec)
        doc = {"kind": "dump", "format_version": r.format_version, "compression": r.compression,
               "manifest": json.loads(r.manifest.to_json()), "records": records,
               "arrays": {n: _array(r.array(n)) for n in r.array_names()}}
        if r.checksums:
            doc["checksums"] = True
        calls = r.calls()
        if calls is not None:  # 1.2: the call structures (key absent before 1.2)
            doc["calls"] = calls.document
        return doc


def describe_inputs(path: str) -> dict:
    """What a reader sees in an input set."""
    s = read_input_set(path)
    return {"kind": "inputs", "sha256": s.sha256, "provenance": s.provenance,
            "samples": [{"arrays": {k: _array(v) for k, v in sorted(x.arrays.items())}, "meta": x.meta}
                        for x in s.samples]}


def describe_all(folder: str, version: str = FORMAT_VERSION) -> dict:
    """Descriptions of the golden files of one version in ``folder``."""
    return {f"dump-v{version}.h5": describe_dump(os.path.join(folder, f"dump-v{version}.h5")),
            f"dump-v{version}-lz4.h5": describe_dump(os.path.join(folder, f"dump-v{version}-lz4.h5")),
            f"inputs-v{version}.h5": describe_inputs(os.path.join(folder, f"inputs-v{version}.h5"))}


# -- the listing shown in SPEC.md -------------------------------------------------------------------------------------

def _value(v) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return repr(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    return repr(v)


def _dtype(dt: np.dtype) -> str:
    if h5py.check_string_dtype(dt) is not None:
        return "utf8"
    return dt.str if dt.names is None else "compound"


def listing(path: str) -> str:
    """An h5py tree listing: groups, datasets (shape, dtype, chunks, filters), attributes with values, the JSON
    documents, and the index rows. Names sorted; nothing that depends on where HDF5 put things (no addresses,
    storage sizes or times), so it is the same for every file the same code writes."""
    lines: list[str] = []
    with h5py.File(path, "r") as f:
        def attrs(obj, indent: str) -> None:
            for name in sorted(obj.attrs):
                lines.append(f"{indent}@{name} = {_value(obj.attrs[name])}")

        def visit(obj, name: str, depth: int) -> None:
            pad = "  " * depth
            if isinstance(obj, h5py.Group):
                lines.append(f"{pad}{name.rstrip('/')}/")
                attrs(obj, pad + "  ")
                for child in sorted(obj):
                    visit(obj[child], child, depth + 1)
                return
            desc = f"{pad}{name}  {_dtype(obj.dtype)} {list(obj.shape)}"
            if obj.chunks:
                desc += f" chunks={list(obj.chunks)}"
            if obj.maxshape != obj.shape:
                desc += f" maxshape={list(obj.maxshape)}"
            plist = obj.id.get_create_plist()
            filters = [f"{plist.get_filter(i)[3].decode() or 'filter'}({plist.get_filter(i)[0]})"
                       for i in range(plist.get_nfilters())]
            if filters:
                desc += " filters=" + ",".join(filters)
            lines.append(desc)
            attrs(obj, pad + "  ")
            if obj.dtype.names:
                columns = [f"{n} {_dtype(obj.dtype.fields[n][0])}" for n in obj.dtype.names]
                lines.append(f"{pad}  columns:")
                for start in range(0, len(columns), 6):
                    lines.append(f"{pad}    " + ", ".join(columns[start:start + 6]))
                if name == "index":
                    lines.append(f"{pad}  rows (seq, key, dtype, shape, storage, data, aux):")
                if name == "index":
                    for row in obj[()]:
                        cells = {n: (row[n].decode() if isinstance(row[n], bytes) else row[n]) for n in
                                 ("seq", "sample", "step", "site", "call", "dtype", "shape", "storage", "data", "aux")}
                        key = f"s{cells['sample']}/t{cells['step']}/{cells['site']}#{cells['call']}"
                        lines.append(f"{pad}  [{cells['seq']:>2}] {key:<40} {cells['dtype']:<13} "
                                     f"{cells['shape']:<10} {cells['storage']:<5} {cells['data']} {cells['aux']}"
                                     .rstrip())
            elif h5py.check_string_dtype(obj.dtype) is not None and obj.shape == ():
                text = obj[()].decode("utf-8")
                try:
                    text = json.dumps(json.loads(text), indent=2, sort_keys=True)
                except ValueError:
                    pass
                lines.extend(f"{pad}  | {line}" for line in text.splitlines())

        visit(f, "/", 0)
    return "\n".join(lines) + "\n"


def spec_block(text: str) -> str:
    """The listing as SPEC.md holds it between the markers."""
    return f"{BEGIN}\n```text\n{text}```\n{END}"


def spec_listing_text(spec_path: str = SPEC) -> str | None:
    """The block currently between the markers in SPEC.md (markers included), or None without markers."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = fh.read()
    if BEGIN not in spec or END not in spec:
        return None
    start = spec.index(BEGIN)
    return spec[start:spec.index(END, start) + len(END)]


def update_spec(dump_path: str, spec_path: str = SPEC) -> None:
    """Replace the block between the golden-listing markers in SPEC.md with the listing of ``dump_path``."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = fh.read()
    old = spec_listing_text(spec_path)
    if old is None:
        raise SystemExit(f"{spec_path}: markers {BEGIN} / {END} not found")
    with open(spec_path, "w", encoding="utf-8") as fh:
        fh.write(spec.replace(old, spec_block(listing(dump_path))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=HERE, help="folder for the golden files (default: next to this script)")
    p.add_argument("--update-spec", action="store_true", help="write the golden dump's listing into SPEC.md")
    p.add_argument("--list", metavar="FILE", help="print the listing of FILE and exit")
    args = p.parse_args(argv)
    if args.list:
        sys.stdout.write(listing(args.list))
        return 0
    for name in make(args.out):
        print(f"wrote {os.path.join(args.out, name)}")
    if args.update_spec:
        update_spec(os.path.join(args.out, DUMP))
        print(f"updated the golden listing in {SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
