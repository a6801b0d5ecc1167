"""Click parameter callbacks shared by the analysis commands."""
from __future__ import annotations

import re

import click


def check_regex(ctx, param, value):
    """A --sites / --logits-site value must compile: a bad regex is a usage error (exit 2), never a traceback."""
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"invalid regex {value!r}: {exc}") from None
    return value
