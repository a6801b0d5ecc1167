"""Record keys (SPEC.md section 5): stable names for captured tensors across devices, dtypes and backends.

A key is ``(sample, step, site, call)``; its text form is ``s<sample>/t<step>/<site>#<call>``. The site is
``<module path>:<in|out>[.<argument path>]``; the root module's path is the empty string, so the model's final
``logits`` output is the site ``:out.logits``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_KEY_RE = re.compile(r"^s(\d+)/t(\d+)/(.+)#(\d+)$", re.DOTALL)
_SITE_RE = re.compile(r"^(?P<module>[^:]*):(?P<dir>in|out)(?:\.(?P<arg>.+))?$", re.DOTALL)


@dataclass(frozen=True, order=True)
class RecordKey:
    """Identity of one captured tensor: which sample, which generation step, which site, which call."""

    sample: int
    step: int
    site: str
    call: int = 0

    def __post_init__(self):
        if self.sample < 0 or self.step < 0 or self.call < 0:
            raise ValueError(f"negative index in record key {self!r}")
        if not self.site or "\x00" in self.site:
            raise ValueError(f"invalid site {self.site!r}")

    def __str__(self) -> str:
        return f"s{self.sample}/t{self.step}/{self.site}#{self.call}"

    @classmethod
    def parse(cls, text: str) -> "RecordKey":
        """Parse the text form ``s<sample>/t<step>/<site>#<call>``; raise ValueError when malformed."""
        m = _KEY_RE.match(text)
        if not m:
            raise ValueError(f"malformed record key {text!r} (expected s<sample>/t<step>/<site>#<call>)")
        return cls(int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4)))


def make_site(module: str, direction: str, arg_path: str = "") -> str:
    """Build a site string from a module path, ``in``/``out`` and an optional dotted argument path."""
    if direction not in ("in", "out"):
        raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
    return f"{module}:{direction}" + (f".{arg_path}" if arg_path else "")


def split_site(site: str) -> tuple[str, str, str]:
    """Split a site into ``(module, direction, arg_path)``.

    Sites that do not follow the module grammar (for example raw ONNX value names that could not be mapped to a
    module) are returned as ``(site, "", "")``.
    """
    m = _SITE_RE.match(site)
    if not m:
        return site, "", ""
    return m.group("module"), m.group("dir"), m.group("arg") or ""
