"""Two-pass capture (issue 20): from a pass-1 report (statistics of every module on both sides) to the pass-2 record
policy that keeps full tensors only around the first divergent region.

Pass 1 captures every site as statistics (``--default-policy stats``): a few numbers per tensor, so even a big model
fits, and its comparison still finds the first divergent site. ``zoom_policy`` turns that report into a policy that
is ``stats`` everywhere except, ``full``:

- every site (inputs ``:in.*`` and outputs ``:out*``) of the modules of the ``window`` sites before and after the
  centre site, so that replay (``compare --replay``) has each module's inputs next to its outputs;
- the submodules of those modules that lie inside a repeated block, i.e. whose path has a numbered part
  (``model.layers.1``, ``model.layers.1.self_attn``): a layer in the window brings its projections along, so a fault
  that statistics cannot see (two heads swapped in ``q_proj`` leave its norms unchanged) is still captured when the
  window reaches the layer's output. The modules around the stack (``model``, ``model.layers``, ``transformer``)
  bring only their own sites: their subtree is the whole network, and one of their sites is in the window whenever
  the divergence is near the embedding or the head;
- the root output (``:out*``, the logits), for the logit block of the pass-2 comparison.

The centre is the replay's first module that introduces error (``report.local["first_introduced"]``) when the
report has one, else the first divergent site (``report.first_divergence``).

The policy is the plain document of the job format (protocol/jobs.py: ``{"rules": [{"pattern", "action",
"params"}], "default", "byte_budget"}``, what ``capture.policy.RecordPolicy.from_dict`` reads): analyze/ does not
import capture/ (docs/ARCHITECTURE.md section 2), and no ML framework is imported here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from protocol import atomic_write_json

from .errors import ReportError
from .localize import ROOT_NAME
from .report import read_report

DEFAULT_WINDOW = 3
#: the root module's outputs (the logits of a causal LM): full in pass 2 so its logit block can be computed
ROOT_OUTPUT_PATTERN = r"^:out"


@dataclass
class ZoomPlan:
    """The pass-2 plan of a pass-1 report.

    Attributes:
        policy: the pass-2 policy document (what ``--policy-file`` and a job's ``policy`` accept).
        centre: the site the window is centred on.
        centred_on: ``first_introduced`` (the replay's first module that introduces error) or ``first_divergence``.
        window: the sites of the window, in execution order.
        modules: the module paths whose sites are kept full (with their submodules' when they lie inside a numbered
            block, ``in_repeated_block``; ``""`` is the root).
    """

    policy: dict
    centre: str
    centred_on: str
    window: list = field(default_factory=list)
    modules: list = field(default_factory=list)

    @property
    def rules(self) -> list[dict]:
        """The policy's rules (``{"pattern", "action", "params"}``), first match wins."""
        return self.policy["rules"]


def module_pattern(module: str) -> str:
    """The regex of a module's own sites and its submodules' sites (``model.layers.1`` matches
    ``model.layers.1:in.0`` and ``model.layers.1.mlp:out``, never ``model.layers.10:out``)."""
    return "^" + re.escape(module) + r"[.:]"


def own_sites_pattern(module: str) -> str:
    """The regex of a module's own sites only (``model`` matches ``model:in.0``, never ``model.norm:out``)."""
    return "^" + re.escape(module) + ":"


def in_repeated_block(module: str) -> bool:
    """Whether a module lies inside a repeated block (a numbered part in its path: ``model.layers.1.mlp``, ``h.0``,
    ``0`` of a Sequential), so that its subtree is one block's share of the network, not the stack around it."""
    return any(part.isdigit() for part in module.split("."))


def zoom_policy(report, *, window: int = DEFAULT_WINDOW) -> ZoomPlan | None:
    """The pass-2 record policy of a pass-1 report.

    Args:
        report: a Report (``read_report``) or the path of a saved report.
        window: how many sites before and after the centre site to keep (in the reference's execution order).

    Returns:
        A ZoomPlan, or None when the report has no divergence (nothing to zoom on).

    Raises:
        ReportError: the file is not a usable report, or its first divergent site is not in its error curve.
        ValueError: a negative window.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, not {window}")
    path = None
    if isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        report = read_report(path)
    curve = (report.localization or {}).get("curve") or []
    centre, centred_on = _centre(report)
    if centre is None:
        return None
    names = [e["site"] for e in curve]
    if centre not in names:
        raise ReportError(f"the centre site {centre} is not in the report's error curve", path,
                          "compare the pass-1 dumps again with 'parity compare -o'")
    i = names.index(centre)
    entries = curve[max(0, i - window):i + window + 1]
    modules = _outermost(sorted({e["module"] for e in entries}))
    patterns = [module_pattern(m) if in_repeated_block(m) else own_sites_pattern(m) for m in modules if m]
    # the root: its own sites only (its submodules are the whole model), and its output (logits) always
    patterns.append("^:" if "" in modules else ROOT_OUTPUT_PATTERN)
    policy = {"rules": [{"pattern": p, "action": "full", "params": {}} for p in patterns], "default": "stats",
              "byte_budget": None}
    return ZoomPlan(policy, centre, centred_on, [e["site"] for e in entries], modules)


def write_zoom_policy(plan: ZoomPlan, path: str | os.PathLike) -> None:
    """Write a plan's policy document as JSON (atomically: a reader sees the old file or the new one)."""
    atomic_write_json(path, plan.policy)


def _centre(report) -> tuple[str | None, str]:
    """The site to centre on: the first module that introduces error (replay), else the first divergent site."""
    first = (report.local or {}).get("first_introduced")
    if first and first.get("site"):
        return first["site"], "first_introduced"
    if report.first_divergence:
        return report.first_divergence["site"], "first_divergence"
    return None, ""


def _outermost(modules: list[str]) -> list[str]:
    """Drop the modules inside another listed module whose rule covers them already (one inside a repeated block);
    the root and the modules around the stack cover nothing but their own sites. Sorted order puts a parent right
    before its submodules."""
    kept: list[str] = []
    for m in modules:
        if m == ROOT_NAME:
            m = ""
        if not any(p and in_repeated_block(p) and (m == p or m.startswith(p + ".")) for p in kept):
            kept.append(m)
    return kept


def policy_lines(plan: ZoomPlan) -> list[str]:
    """The terminal summary of a plan: the centre, the window and the rules."""
    lines = [f"centre: {plan.centre} ({plan.centred_on.replace('_', ' ')})",
             f"window: {len(plan.window)} sites, {plan.window[0]} .. {plan.window[-1]}" if plan.window else
             "window: (empty)"]
    lines += [f"{r['action']:<6} {r['pattern']}" for r in plan.rules]
    lines.append(f"{plan.policy['default']:<6} (every other site)")
    return lines
