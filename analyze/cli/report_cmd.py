"""``parity report REPORT.json --html out.html``: render a saved comparison report (analyze/render/html.py)."""
from __future__ import annotations

import click


@click.command("report")
@click.argument("report", type=click.Path(dir_okay=False), metavar="REPORT.json")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), required=True,
              help="Write the self-contained HTML page here (viewable offline).")
def report_cmd(report, html_path) -> None:
    """Render a report written by 'parity compare -o' as one self-contained HTML page: the verdict and the
    first-divergence card, the error curve over execution order, the error-gain ranking, threshold failures, worst
    elements, the logit/perplexity block and the unmatched sites.

    Exit code 0 when the page was written (whatever the report's verdict), 3 for an unusable report.

    \b
    Example:
      parity report report.json --html report.html
    """
    from analyze.render.html import write_report_html

    verdict = write_report_html(report, html_path)
    click.echo(f"verdict: {verdict}")
    click.echo(f"html: {html_path}")
