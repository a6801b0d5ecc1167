"""``parity zoom REPORT.json -o POLICY.json``: the pass-2 capture policy of a pass-1 report (analyze/zoom.py)."""
from __future__ import annotations

import click

from analyze.zoom import DEFAULT_WINDOW


@click.command("zoom")
@click.argument("report", type=click.Path(dir_okay=False), metavar="REPORT.json")
@click.option("--window", type=click.IntRange(min=0), default=DEFAULT_WINDOW, show_default=True,
              help="Sites before and after the first divergent site whose modules are captured in full.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, metavar="POLICY.json",
              help="Write the policy here (default: print it).")
def zoom_cmd(report, window, output) -> None:
    """Two-pass capture: from a pass-1 report (both sides captured with --default-policy stats) to the pass-2
    record policy: statistics everywhere, full tensors for every site (inputs and outputs) of the modules of the
    WINDOW sites before and after the first divergent site (the replay's first module that introduces error, when
    the report has one), the submodules of those inside a numbered block (a layer, its attention), and the root
    output (logits). Capture both sides again on the same
    input set with 'parity capture torch ... --policy-file POLICY.json' and compare with --replay.

    Exit code 0 when the policy was written or printed, and also for a report with no divergence (then nothing is
    written: there is nothing to zoom on); 3 for an unusable report.

    \b
    Example:
      parity capture torch ref-model --inputs inputs.h5 --label ref -o ref-stats.h5 --default-policy stats
      parity capture torch cand-model --inputs inputs.h5 --label cand -o cand-stats.h5 --default-policy stats
      parity compare ref-stats.h5 cand-stats.h5 -o pass1.json
      parity zoom pass1.json --window 3 -o zoom.json
      parity capture torch ref-model --inputs inputs.h5 --label ref -o ref-zoom.h5 --policy-file zoom.json
    """
    import json

    from analyze.zoom import policy_lines, write_zoom_policy, zoom_policy

    plan = zoom_policy(report, window=window)
    if plan is None:
        click.echo(f"{report}: no divergence, nothing to zoom on (no policy written)")
        return
    if output is None:
        click.echo(json.dumps(plan.policy, indent=2))
        return
    write_zoom_policy(plan, output)
    for line in policy_lines(plan):
        click.echo(line)
    click.echo(f"policy: {output}")
