"""``parity validate FILE...``: deep checks of dumps and input sets."""
from __future__ import annotations

import click

from protocol import ParityError, validate


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate_cmd(files: tuple[str, ...]) -> None:
    """Check each FILE completely: identity, version, completeness, manifest, index, and every record's data.

    Prints one line per file. Exits 0 when all are sound, 3 when any is not (each bad file gets its reason).

    \b
    Example:
      parity validate dumps/*.h5
    """
    bad = 0
    for path in files:
        try:
            click.echo(validate(path).summary())
        except ParityError as exc:
            bad += 1
            click.echo(f"Error: {exc.message}", err=True)
    if bad:
        raise SystemExit(3)
