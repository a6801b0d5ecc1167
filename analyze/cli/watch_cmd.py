"""``parity watch ROOT``: the watcher daemon that writes a report for each candidate dump of a shared folder."""
from __future__ import annotations

import click

from common.console import log_to_stderr, stop_on_signals


@click.command("watch")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--thresholds", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Thresholds file for every run (a job's own thresholds win for its run).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Analyses running at once, each in its own process.")
@click.option("--polling", is_flag=True,
              help="Poll the folder instead of inotify (network filesystems: inotify misses remote writes).")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between scans with --polling.")
@click.option("--debounce", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
              help="Seconds to gather file events before acting on them.")
@click.option("--once", is_flag=True, help="Catch up on what is there, wait for the analyses, and exit.")
@click.option("--heartbeat-timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Take over a pair whose watcher's heartbeat is older than this many seconds (several watchers "
                   "on one folder).")
def watch_cmd(root, thresholds, workers, polling, poll_interval, debounce, once, heartbeat_timeout):
    """Compare each candidate dump of shared folder ROOT with its run's reference, as soon as both are in place.

    Catches up on start, then follows new dumps. Writes ROOT/reports/<run>/<ref>__vs__<cand>.json (with .csv and
    .html), exactly once per pair across restarts and with several watchers on one folder (each pair is analysed
    under a lease), and <label>.error.json for a dump it cannot use. Never deletes or rewrites a dump. Refuses a
    folder without exclusive creation, hard links or atomic renames. One log line per report; SIGTERM or Ctrl-C
    stops it cleanly.

    \b
    Example:
      parity watch /mnt/parity --workers 4 --polling
    """
    from analyze.watcher import Watcher, WatchSettings
    log_to_stderr("analyze.watcher")
    watcher = Watcher(WatchSettings(root=root, thresholds=thresholds, workers=workers, polling=polling,
                                    poll_interval=poll_interval, debounce=debounce, once=once,
                                    heartbeat_timeout=heartbeat_timeout))
    with stop_on_signals(watcher.stop):
        watcher.run()
