"""``parity thresholds build`` and ``parity thresholds check``: calibrate per-site thresholds from baseline reports
and judge a report against them (analyze.thresholds, analyze.threshold_check)."""
from __future__ import annotations

import click

_STATS = ("mean", "max", "p99", "p99.9")


def _names(ctx, param, value):
    names = [m.strip() for v in value for m in v.split(",") if m.strip()]
    return names or None


@click.command("build")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="REPORT.json...")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The thresholds file to write.")
@click.option("--stat", type=click.Choice(_STATS), default="max", show_default=True,
              help="Statistic over the baseline records of each site.")
@click.option("--margin", type=click.FloatRange(min=0), default=1.5, show_default=True,
              help="Multiplies the statistic (on the error scale: 1 - cosine for cosines).")
@click.option("--logit-percentile", type=click.FloatRange(min=0, max=100, min_open=True), default=99.0,
              show_default=True, help="Percentile over tokens for the logit metrics (aiu-fms-testing-utils: 99).")
@click.option("--metrics", multiple=True, callback=_names, metavar="NAME[,NAME]",
              help="Site metrics to threshold (default rel_l2, cosine, stats_rel_l2).")
@click.option("--logit-metrics", multiple=True, callback=_names, metavar="NAME[,NAME]",
              help="Logit metrics to threshold (default kl, js, fms_ce, fms_diff_mean).")
def build_cmd(reports, output, stat, margin, logit_percentile, metrics, logit_metrics) -> None:
    """Build per-site thresholds from baseline REPORTs (e.g. reference vs a trusted device at several batch sizes and
    sequence lengths), matched by site name across shapes.

    Each site's limit is the chosen statistic of its baseline records' values times the margin; each logit metric's
    limit is the percentile over all baseline tokens times the margin. For the logit limits, write the baseline
    reports with 'parity compare --tokens' (otherwise the reports' own p99 is used).

    \b
    Example:
      parity thresholds build base-s128.json base-s512.json -o th.json --stat p99 --margin 2
    """
    from analyze.thresholds import build_thresholds, write_thresholds

    try:
        doc = build_thresholds(list(reports), stat=stat, margin=margin, logit_percentile=logit_percentile,
                               metrics=metrics, logit_metrics=logit_metrics)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    write_thresholds(doc, output)
    n_metrics = sum(len(s["metrics"]) for s in doc["sites"].values())
    n_logits = sum(len(v) for v in doc["logits"].values())
    click.echo(f"thresholds: {len(doc['sites'])} sites ({n_metrics} limits), {n_logits} logit limits from "
               f"{len(reports)} report(s), {stat} x {margin:g}")
    click.echo(f"written: {output}")


@click.command("check")
@click.argument("report", type=click.Path(dir_okay=False), metavar="REPORT.json")
@click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False), required=True,
              help="The thresholds file (parity thresholds build).")
@click.option("--max-failure-rate", type=click.FloatRange(min=0, max=1), default=0.01, show_default=True,
              help="Allowed share of tokens over a logit threshold.")
def check_cmd(report, thresholds_path, max_failure_rate) -> None:
    """Judge a comparison REPORT against thresholds: every record of a thresholded site against its limits, and the
    failure rate of each logit metric (share of tokens over its limit) against --max-failure-rate.

    Prints one line per failing site and logit metric (with the failing tokens) and the worst site. Exit code 0 when
    everything is within the thresholds, 1 on failure, 3 for an unusable report or thresholds file. A report whose
    logits are thresholded needs per-token values: write it with 'parity compare --tokens'.

    \b
    Example:
      parity thresholds check report.json --thresholds th.json --max-failure-rate 0.01
    """
    from analyze.render.text import threshold_lines
    from analyze.threshold_check import check_report_file

    result = check_report_file(report, thresholds_path, max_failure_rate=max_failure_rate)
    for line in threshold_lines(result):
        click.echo(line)
    raise SystemExit(0 if result["passed"] else 1)
