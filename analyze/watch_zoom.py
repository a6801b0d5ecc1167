"""The watcher's pass 2 of a two-pass capture (issue 20): a job with ``zoom`` (a window) is pass 1; after one of its
pair reports shows a divergence, the pass-2 job ``<run_id>.zoom`` is submitted, once.

Once among any number of watchers and restarts: the job file is created exclusively (protocol's
``create_exclusive_json``), so the first watcher to get there writes it and every other attempt finds it there.
The decision reads only what is on disk (the run's job and its JSON pair reports), so a watcher that stopped
between publishing a report and submitting catches up at its next start-up scan.
"""
from __future__ import annotations

import logging
import os

from protocol import ParityError, SharedFolder, create_exclusive_json
from protocol.jobs import Job, read_job, utc_now

from .report import read_report
from .zoom import zoom_policy

# a child of the watcher's logger: the daemon's log (common.console.log_to_stderr("analyze.watcher")) shows it
log = logging.getLogger("analyze.watcher.zoom")

ZOOM_SUFFIX = ".zoom"


def zoom_run_id(run_id: str) -> str:
    """The run id of a pass-1 run's pass-2 job."""
    return run_id + ZOOM_SUFFIX


def pass_two_job(job: Job, policy: dict) -> Job:
    """The pass-2 job of a pass-1 job: everything the same but the run id, the policy and no ``zoom`` (pass 2
    never zooms again)."""
    return Job(run_id=zoom_run_id(job.run_id), model=dict(job.model), backend=job.backend, inputs=job.inputs,
               labels=list(job.labels), reference=job.reference, mode=job.mode, max_new_tokens=job.max_new_tokens,
               policy=policy, targets={k: dict(v) for k, v in job.targets.items()}, thresholds=job.thresholds,
               zoom=None, created=utc_now())


def submit_zoom_job(folder: SharedFolder, run_id: str) -> str | None:
    """Submit the pass-2 job of ``run_id`` when it is due: the run's job has ``zoom``, one of its JSON pair
    reports has a divergence, and no ``<run_id>.zoom`` job exists yet.

    Returns:
        The path of the job written by this call, or None (not a zoom run, nothing diverged yet, or already
        submitted, by this watcher or another).

    Raises:
        ParityError: the run's job cannot be read, or the pass-2 run id is not a valid name.
    """
    job = read_job(folder.job_path(run_id))
    if job.zoom is None:
        return None
    path = folder.job_path(zoom_run_id(run_id))
    if os.path.exists(path):
        return None
    for report_path in _pair_reports(folder, run_id, job.reference):
        try:
            plan = zoom_policy(read_report(report_path), window=job.zoom)
        except ParityError as exc:  # a report we cannot use is skipped; another pair's may do
            log.warning("run %s: no zoom from %s: %s", run_id, report_path, exc.message)
            continue
        if plan is None:
            continue
        new = pass_two_job(job, plan.policy)
        if not create_exclusive_json(path, new.to_dict()):
            return None  # another watcher got there first: its job is the one
        log.info("run %s: pass 2 submitted as %s (centre %s, %d modules in full)", run_id, new.run_id, plan.centre,
                 len(plan.modules))
        return path
    return None


def _pair_reports(folder: SharedFolder, run_id: str, reference: str) -> list[str]:
    """The run's published JSON pair reports (``<ref>[.rank<r>]__vs__<cand>[.rank<r>].json``), sorted."""
    report_dir = folder.report_dir(run_id)
    try:
        names = os.listdir(report_dir)
    except FileNotFoundError:
        return []
    return [os.path.join(report_dir, n) for n in sorted(names)
            if n.startswith(reference) and "__vs__" in n and n.endswith(".json")]
