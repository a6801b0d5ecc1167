"""``parity compare REF CAND``: compare a candidate dump with a reference dump (analyze.compare)."""
from __future__ import annotations


import click

from .params import check_regex


def _split_sides(dumps: tuple[str, ...]) -> tuple[list[str], list[str]]:
    if len(dumps) < 2 or len(dumps) % 2:
        raise click.UsageError("give REF and CAND (or the same number of rank dumps for each side: "
                               "ref.rank0.h5 ref.rank1.h5 cand.rank0.h5 cand.rank1.h5)")
    half = len(dumps) // 2
    return list(dumps[:half]), list(dumps[half:])


def _metrics(ctx, param, value):
    from analyze.compare import ALL_METRICS
    names = [m.strip() for v in value for m in v.split(",") if m.strip()]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown:
        raise click.BadParameter(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    return names or None


def _tolerances(ctx, param, value):
    table = {}
    for item in value:
        dtype, sep, tol = item.partition("=")
        try:
            table[dtype.strip()] = float(tol)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not DTYPE=TOL (e.g. float32=1e-4)") from None
        if not sep or not dtype.strip():
            raise click.BadParameter(f"{item!r} is not DTYPE=TOL (e.g. float32=1e-4)")
    return table or None


@click.command("compare")
@click.argument("dumps", nargs=-1, required=True, metavar="REF CAND")
@click.option("--inputs", type=click.Path(dir_okay=False), default=None,
              help="The input set the dumps consumed (next-token labels); default: found next to the dumps.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False), default=None,
              help="Write sites.csv, records.csv, logits.csv and unmatched.csv into this folder.")
@click.option("--metrics", multiple=True, callback=_metrics, metavar="NAME[,NAME]",
              help="Only these metrics in the report (default: all).")
@click.option("--sites", default=None, callback=check_regex, metavar="REGEX", help="Only sites matching this regex.")
@click.option("--logits-site", default=None, callback=check_regex, metavar="REGEX",
              help="Sites holding logits (default: the model output ':out.logits').")
@click.option("--tolerance", "tolerances", multiple=True, callback=_tolerances, metavar="DTYPE=TOL",
              help="Override a default tolerance (docs/METRICS.md section 6), e.g. float32=1e-4.")
@click.option("--tokens", is_flag=True, help="Include per-token logit metrics in the JSON report.")
@click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False), default=None,
              help="Judge sites and logit failure rates against this thresholds file (parity thresholds build).")
@click.option("--max-failure-rate", type=click.FloatRange(min=0, max=1), default=0.01, show_default=True,
              help="With --thresholds: allowed share of tokens over a logit threshold.")
@click.option("--floor", type=click.Path(), default=None,
              help="Noise-floor dump (the reference captured again on its own device): judge the excess over it.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write the self-contained HTML report here.")
@click.option("--replay", "replay_model", type=click.Path(), default=None, metavar="REF_MODEL",
              help="The reference model's folder: replay each module of CAND on CAND's own recorded inputs and "
                   "report the error each module introduces itself (needs torch on this host).")
@click.option("--replay-factor", type=click.FloatRange(min=1.0), default=2.0, show_default=True,
              help="With --replay: a module introduces error when its local error exceeds this many times what "
                   "the candidate's precision explains.")
@click.option("--replay-modules", default=None, callback=check_regex, metavar="REGEX",
              help="With --replay: replay only the modules whose path matches.")
@click.option("--replay-device", default=None, metavar="DEVICE",
              help="With --replay: the device to replay on (default cpu).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Measure the records on the workers of this Dask scheduler (tcp://HOST:PORT); they open the "
                   "dumps by the same paths. Same report as without it.")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="With --scheduler: seconds to reach the scheduler.")
def compare_cmd(dumps, inputs, output, csv_dir, metrics, sites, logits_site, tolerances, tokens, thresholds_path,
                max_failure_rate, floor, html_path, replay_model, replay_factor, replay_modules, replay_device,
                scheduler, scheduler_timeout) -> None:
    """Compare the candidate dump CAND with the reference dump REF, site by site in execution order.

    Prints one line per site over the default tolerance (rel_l2 > tol or cosine < 1 - tol, tol set by the
    lower-precision dtype), then totals. For multi-rank captures give every rank of REF, then every rank of CAND
    (or a folder or a quoted glob per side). Exit code 0 when every site is within tolerance, 1 on divergence,
    2 on usage errors, 3 when a file is unusable, the dumps consumed different input sets, or a record could not be
    compared (a damaged record, a shape mismatch) and nothing comparable diverged. With --thresholds the
    thresholds replace the default tolerance; with --floor a site diverges only by its excess over the noise floor.
    The summary names the first divergent site and the module with the largest error gain (output error / input
    error). With --replay REF_MODEL each module of CAND whose inputs and outputs it holds in full is run again, on the
    reference model, on CAND's own inputs: the summary then names first the module that introduces error beyond
    what CAND's precision explains, and exits 1 if one does. With --scheduler the record comparisons run on a Dask
    cluster's workers, which must see the dumps (and the input set) at the same paths; the report is the same, and
    an unreachable scheduler or a cluster without workers exits 3.

    \b
    Example:
      parity compare dumps/cpu-fp32.h5 dumps/cpu-bf16.h5 --inputs inputs.h5 -o report.json --csv report_csv
      parity compare dumps/cpu-fp32.h5 dumps/gpu-fp16.h5 --thresholds th.json --html report.html
      parity compare dumps/cpu-fp32.h5 dumps/gpu-bf16.h5 --replay models/llama
      parity compare /mnt/parity/dumps/r1/cpu-fp32.h5 /mnt/parity/dumps/r1/gpu.h5 --scheduler tcp://10.0.0.5:8786
    """
    from analyze.compare import compare
    from analyze.render.text import summary_lines

    ref, cand = _split_sides(dumps)
    cluster = None
    if scheduler:
        from analyze.distributed import ClusterSettings
        from common.console import log_to_stderr
        log_to_stderr("analyze.distributed")  # the workers' environment warnings
        cluster = ClusterSettings(scheduler, connect_timeout=scheduler_timeout)
    report = compare(ref if len(ref) > 1 else ref[0], cand if len(cand) > 1 else cand[0], inputs=inputs,
                     metrics=metrics, sites=sites, logit_sites=logits_site, tolerances=tolerances,
                     thresholds=thresholds_path, max_failure_rate=max_failure_rate, floor=floor, scheduler=cluster,
                     replay=replay_model, replay_factor=replay_factor, replay_modules=replay_modules,
                     replay_device=replay_device)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for line in summary_lines(report):
        click.echo(line)
    if output:
        report.write_json(output, tokens=tokens)
        click.echo(f"report: {output}")
    if csv_dir:
        from analyze.render.tables import write_csv
        write_csv(report, csv_dir)
        click.echo(f"csv: {csv_dir}")
    if html_path:
        from analyze.render.html import write_html
        write_html(report, html_path)
        click.echo(f"html: {html_path}")
    raise SystemExit(report.exit_code)
