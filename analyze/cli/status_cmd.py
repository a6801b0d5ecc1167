"""``parity status ROOT``: runs, labels, claim states, reports and verdicts of a shared folder."""
from __future__ import annotations

import json
import sys

import click

_COLUMNS = (("run", "run_id"), ("label", "label"), ("role", "role"), ("claim", "claim"), ("try", "attempt"),
            ("agent", "agent"), ("dump", "dump"), ("verdict", "verdict"), ("first divergence", "first_divergence"),
            ("note", "note"))


def _note(row: dict) -> str:
    if row.get("job_error"):
        return f"invalid job: {row['job_error']}"
    if row.get("unusable"):
        return f"unusable dump: {row['unusable']}"
    if row.get("error"):
        return row["error"]
    if row.get("heartbeat_age") is not None:
        return f"heartbeat {row['heartbeat_age']:.0f} s ago"
    return ""


def _cell(row: dict, key: str) -> str:
    value = _note(row) if key == "note" else row.get(key)
    if key == "dump":
        value = "yes" if value else "-"
    return "-" if value in (None, "") else str(value)


@click.command("status")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (one object per run and label).")
@click.option("--heartbeat-timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Show running claims with an older heartbeat as stale.")
def status_cmd(root, as_json, heartbeat_timeout):
    """Show the runs of shared folder ROOT: each label's claim, dump, report verdict and first divergence.

    Reads the JSON documents only (jobs, claims, reports), never a dump. A table on a terminal; when piped, a header
    line then one tab-separated line per run and label.

    \b
    Example:
      parity status /mnt/parity --json
    """
    from analyze.status import collect_status, status_rows
    rows = status_rows(collect_status(root, heartbeat_timeout=heartbeat_timeout))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs in {root}", err=True)
        return
    if not sys.stdout.isatty():
        click.echo("\t".join(name for name, _ in _COLUMNS))  # a header, so the columns can be read and cut
        for row in rows:
            click.echo("\t".join(_cell(row, key) for _, key in _COLUMNS))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(*(title for title, _ in _COLUMNS))
    for row in rows:
        table.add_row(*(_cell(row, key) for _, key in _COLUMNS))
    Console().print(table)
