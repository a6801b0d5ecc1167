"""``parity inspect FILE``: the manifest and the record table of a dump (or the samples of an input set)."""
from __future__ import annotations

import json
import math

import click

from protocol import open_dump, read_input_set
from protocol.h5util import attr_str, open_h5
from protocol.version import INPUTS_FORMAT


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (manifest and records) instead of a table.")
@click.option("--sites", default=None, metavar="REGEX", help="Only records whose site matches this regex.")
def inspect_cmd(file: str, as_json: bool, sites: str | None) -> None:
    """Show FILE's manifest and one line per record: key, seq, shape, dtype, storage, statistics.

    Reads only the index, never tensor data, so it is fast on any size of dump.

    \b
    Example:
      parity inspect dumps/cpu-fp32.h5 --sites 'layers\\.0\\.'
    """
    import re
    with open_h5(file, "dump") as f:
        is_inputs = attr_str(f, "format") == INPUTS_FORMAT
    if is_inputs:
        _inspect_inputs(file, as_json)
        return
    pattern = re.compile(sites) if sites else None
    with open_dump(file) as dump:
        records = [r for r in dump.records() if pattern is None or pattern.search(r.key.site)]
        if as_json:
            doc = {"path": file, "format_version": dump.format_version, "manifest": json.loads(dump.manifest.to_json()),
                   "records": [{"key": str(r.key), "seq": r.seq, "module_type": r.module_type, "dtype": r.dtype,
                                "shape": list(r.shape), "orig_shape": list(r.orig_shape), "storage": r.storage,
                                "stats": r.stats.to_dict(), "meta": r.meta} for r in records]}
            click.echo(json.dumps(doc, indent=2, allow_nan=True))
            return
        m = dump.manifest
        click.echo(f"{file}: dump v{dump.format_version}, {len(dump)} records, compression {dump.compression}")
        click.echo(f"  run {m.run_id or '-'}  label {m.label or '-'}  rank {m.rank}/{m.world_size}  "
                   f"created {m.created} on {m.host}")
        click.echo(f"  model {m.model.get('path') or m.model.get('id') or '-'}  "
                   f"framework {m.framework.get('name', '-')} {m.framework.get('version', '')}  "
                   f"device {m.device.get('name', '-')}  dtype {m.dtype or '-'}")
        click.echo(f"  capture {m.capture.get('method')} / {m.capture.get('mode')}  inputs {m.inputs_sha256[:16] or '-'}")
        click.echo(f"{'seq':>6}  {'key':<60} {'dtype':<9} {'shape':<18} {'storage':<6} "
                   f"{'min':>10} {'max':>10} {'mean':>10} {'std':>10} {'nan':>5} {'inf':>5}")
        for r in records:
            s = r.stats
            click.echo(f"{r.seq:>6}  {str(r.key):<60} {r.dtype:<9} {str(list(r.shape)):<18} {r.storage:<6} "
                       f"{_fmt(s.min):>10} {_fmt(s.max):>10} {_fmt(s.mean):>10} {_fmt(s.std):>10} "
                       f"{s.nan_count:>5} {s.inf_count:>5}")


def _inspect_inputs(file: str, as_json: bool) -> None:
    inputs = read_input_set(file)
    if as_json:
        doc = {"path": file, "sha256": inputs.sha256, "provenance": inputs.provenance,
               "samples": [{"arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                                       for k, v in s.arrays.items()}, "meta": s.meta} for s in inputs.samples]}
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{file}: input set, {len(inputs)} samples, sha256 {inputs.sha256}")
    click.echo(f"  provenance {json.dumps(inputs.provenance, sort_keys=True)}")
    for i, s in enumerate(inputs.samples):
        arrays = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in sorted(s.arrays.items()))
        click.echo(f"  sample {i}: {arrays}")
