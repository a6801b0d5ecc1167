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
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Compare each pair on the workers of this Dask scheduler (tcp://HOST:PORT) instead of local "
                   "processes; they must see ROOT at the same path. Reports are written here, as without it.")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="With --scheduler: seconds to reach the scheduler.")
@click.option("--no-replay", is_flag=True,
              help="Do not replay candidates' modules on the job's model (by default: when the reference's model "
                   "is a PyTorch folder inside ROOT and torch is installed here).")
def watch_cmd(root, thresholds, workers, polling, poll_interval, debounce, once, heartbeat_timeout, scheduler,
              scheduler_timeout, no_replay):
    """Compare each candidate dump of shared folder ROOT with its run's reference, as soon as both are in place.

    Catches up on start, then follows new dumps. Writes ROOT/reports/<run>/<ref>__vs__<cand>.json (with .csv and
    .html), exactly once per pair across restarts and with several watchers on one folder (each pair is analysed
    under a lease), and <label>.error.json for a dump it cannot use. Never deletes or rewrites a dump. Refuses a
    folder without exclusive creation, hard links or atomic renames. One log line per report; SIGTERM or Ctrl-C
    stops it cleanly. With --scheduler the comparisons run on a Dask cluster (a worker killed mid-analysis: the
    scheduler reruns it elsewhere) and this process writes the reports, exactly once as without it; --workers is
    then unused. An unreachable scheduler exits 3. When the job's reference model is a PyTorch folder inside
    ROOT, each candidate's modules are replayed on it (the report's local errors: where error is introduced);
    without torch on this host the report says so and has none.

    \b
    Example:
      parity watch /mnt/parity --workers 4 --polling
      parity watch /mnt/parity --polling --scheduler tcp://10.0.0.5:8786
    """
    from analyze.watcher import Watcher, WatchSettings
    log_to_stderr("analyze.watcher")
    watcher = Watcher(WatchSettings(root=root, thresholds=thresholds, workers=workers, polling=polling,
                                    poll_interval=poll_interval, debounce=debounce, once=once,
                                    heartbeat_timeout=heartbeat_timeout, scheduler=scheduler,
                                    connect_timeout=scheduler_timeout, replay=not no_replay))
    with stop_on_signals(watcher.stop):
        watcher.run()
