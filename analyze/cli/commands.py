"""analyze/'s command table for the root ``parity`` CLI (workflows/cli/main.py composes every package's table).

Each entry is ``name -> ("module:attr", one-line help)``, or ``name -> ({sub-table}, help)`` for a group, so that
``parity --help`` lists every command without importing any of it.
"""
from __future__ import annotations

THRESHOLDS_COMMANDS: dict = {
    "build": ("analyze.cli.thresholds_cmd:build_cmd", "Build per-site thresholds from baseline reports."),
    "check": ("analyze.cli.thresholds_cmd:check_cmd", "Judge a report against a thresholds file."),
}
COMMANDS: dict = {
    "inspect": ("analyze.cli.inspect_cmd:inspect_cmd", "Show a dump's or input set's manifest and records."),
    "validate": ("analyze.cli.validate_cmd:validate_cmd", "Check dump and input-set files completely."),
    "compare": ("analyze.cli.compare_cmd:compare_cmd", "Compare a candidate dump with a reference dump."),
    "kl": ("analyze.cli.kl_cmd:kl_cmd", "Pairwise KL divergence of several dumps' logits."),
    "ppl": ("analyze.cli.ppl_cmd:ppl_cmd", "Perplexity of a dump's logits on its input set."),
    "report": ("analyze.cli.report_cmd:report_cmd", "Render a saved report as a self-contained HTML page."),
    "zoom": ("analyze.cli.zoom_cmd:zoom_cmd", "The pass-2 capture policy of a stats-only pass-1 report."),
    "thresholds": (THRESHOLDS_COMMANDS, "Build and check per-site thresholds from baseline reports."),
    # the shared-folder workflow, analysis side
    "watch": ("analyze.cli.watch_cmd:watch_cmd", "Compare each run's dumps as they appear (daemon)."),
    "status": ("analyze.cli.status_cmd:status_cmd", "Show a shared folder's runs, claims and verdicts."),
}
