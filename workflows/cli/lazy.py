"""A click group whose subcommands are imported only when invoked, so ``parity --help`` stays light.

Each entry names ``"module:attribute"`` and a one-line help, so listing commands imports nothing.
"""
from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """click.Group with subcommands given as ``{name: ("module:attr", "one-line help")}``.

    A value whose first element is a dict instead, ``{name: ({sub: ("module:attr", help)}, help)}``, is a nested
    group of lazy subcommands (``parity capture torch``).
    """

    def __init__(self, *args, lazy_commands: dict[str, tuple] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            target, help_text = self.lazy_commands[name]
            if isinstance(target, dict):
                return LazyGroup(name=name, help=help_text, lazy_commands=target)
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands:
                rows.append((name, self.lazy_commands[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
