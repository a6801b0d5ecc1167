"""Thresholds from the per-layer CSV files (tools/get_thresholds.py), written in analyze.thresholds' format so that
``parity compare --thresholds`` applies them.

Per layer (``--layer_io``) the values of every CSV of that layer (all batch sizes, sequence lengths and max new
tokens) are pooled: the printed line is the users' ``Layer <name> avg <metric> = <mean>``; the limits are taken from
the extremes, so the baseline itself always passes: ``abs_diff`` gives ``max_abs_diff`` <= max x margin, ``cos_sim``
gives ``cos_rows_min`` >= 1 - (1 - min) x margin (the margin applies to the error, 1 - cosine). Each entry also keeps
the ``avg``. Without ``--layer_io`` (the decoder-test metric CSVs, one value per token), the 99th percentile of each
metric over all files is printed and ``ce`` / ``diff_mean`` become logit limits (``fms_ce``, ``fms_diff_mean``) of the
``:out.logits`` site.
"""
from __future__ import annotations

import datetime as _dt
import glob
import math
import os

import numpy as np

from protocol import ParityError

from .layer_metrics import model_file_id

LAYER_TO_SITE_METRIC = {"abs_diff": "max_abs_diff", "cos_sim": "cos_rows_min"}
TOKEN_TO_LOGIT_METRIC = {"ce": "fms_ce", "diff_mean": "fms_diff_mean", "fms_ce": "fms_ce",
                         "fms_diff_mean": "fms_diff_mean"}
DEFAULT_MARGIN = 1.5


def read_metric_csv(path: str) -> tuple[str | None, np.ndarray]:
    """The ``# site:`` header (None when absent) and the numeric values of one metric CSV (header lines skipped)."""
    site, values = None, []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if text.startswith("# site:"):
                site = text[len("# site:"):].strip()
                continue
            try:
                values.append(float(text))
            except ValueError:
                continue  # header lines: '# ...' and the metric name
    return site, np.asarray(values, dtype=np.float64)


def layer_of(path: str, metric: str) -> str:
    """The layer name of ``<prefix>--<layer>.<metric>.csv``."""
    name = os.path.basename(path).split("--")[-1]
    return name[: -len(f".{metric}.csv")] if name.endswith(f".{metric}.csv") else name


def get_thresholds(models: list[str], metrics: list[str], file_base: str, *, layer_io: bool = False,
                   margin: float = DEFAULT_MARGIN, echo=print) -> dict:
    """Pool the metric CSVs of each model and build one thresholds document per model.

    Args:
        models: model paths or ids as given to generate_layers_metrics (files are found by their id).
        metrics: ``abs_diff``/``cos_sim`` (with ``layer_io``), or per-token metrics such as ``ce``/``diff_mean``.
        file_base: the folder of the CSVs.
        layer_io: per-layer mode.
        margin: multiplies the baseline error (>= 1 leaves room above the baseline).
        echo: receives the printed lines.

    Returns:
        ``{model id: thresholds document}`` (analyze.thresholds' format).

    Raises:
        ParityError: no CSV found for a model and metric, or a layer CSV without its ``# site`` line.
    """
    from analyze.thresholds import THRESHOLDS_KIND, THRESHOLDS_VERSION, SITE_METRICS
    if not margin >= 0:
        raise ParityError("the margin must be >= 0")
    docs = {}
    for model in models:
        mid = model_file_id(model)
        sites: dict = {}
        logits: dict = {}
        files_used = []
        for metric in metrics:
            files = sorted(glob.glob(os.path.join(glob.escape(file_base), f"{glob.escape(mid)}*{metric}*.csv")))
            if not files:
                raise ParityError(f"no {metric} CSV of model {mid} in this folder", file_base,
                                  "run tools/generate_layers_metrics.py with OUTPUT_PATH set to it first")
            files_used += files
            if not layer_io:
                values = np.concatenate([read_metric_csv(f)[1] for f in files])
                p99 = float(np.percentile(values, 99.0)) if values.size else math.nan
                echo(f"{mid} {metric} {p99}")
                target = TOKEN_TO_LOGIT_METRIC.get(metric)
                if target and values.size:
                    logits.setdefault(":out.logits", {})[target] = {
                        "limit": p99 * margin, "direction": "max", "baseline": p99, "n": int(values.size),
                        "source": "p99 of the metric CSVs"}
                continue
            if metric not in LAYER_TO_SITE_METRIC:
                raise ParityError(f"unknown layer metric {metric!r}", hint="use abs_diff and/or cos_sim")
            pooled: dict = {}
            for f in files:
                site, values = read_metric_csv(f)
                if site is None:
                    raise ParityError("the CSV has no '# site:' header line, so its layer cannot be mapped to a "
                                      "record site", f, "write it with tools/generate_layers_metrics.py")
                pooled.setdefault(layer_of(f, metric), (site, []))[1].append(values)
            target = LAYER_TO_SITE_METRIC[metric]
            for name in sorted(pooled):
                site, parts = pooled[name]
                values = np.concatenate(parts)
                values = values[~np.isnan(values)]
                avg = float(values.mean()) if values.size else math.nan
                echo(f"Layer {name} avg {metric} = {avg}")
                if not values.size:
                    continue
                if metric == "abs_diff":
                    base = float(values.max())
                    limit = base * margin
                else:
                    base = float(values.min())
                    limit = 1.0 - (1.0 - base) * margin
                entry = sites.setdefault(site, {"module_type": "", "layer": name, "metrics": {}})
                entry["metrics"][target] = {"limit": limit, "direction": SITE_METRICS[target], "baseline": base,
                                            "avg": avg, "n": int(values.size)}
        docs[mid] = {"kind": THRESHOLDS_KIND, "schema_version": THRESHOLDS_VERSION,
                     "producer": "tensorparity tools/get_thresholds.py",
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "provenance": {"csv_files": files_used, "statistic": "max" if layer_io else "p99",
                                    "margin": margin, "metrics": list(metrics), "layer_io": layer_io,
                                    "model": model},
                     "sites": sites, "logits": logits}
    return docs
