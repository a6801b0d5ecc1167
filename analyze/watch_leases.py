"""The watcher's lease on a pair, its scratch folder, and the clean-up of what killed watchers left (SPEC.md 13.3).

Several watchers may run on one ROOT (by mistake, or for availability). A pair is analysed only by the watcher that
holds its lease: a claim (protocol/claims.py) on (run, candidate) kept in the run's report folder:

    ROOT/reports/<run>/.watch/<cand>.json, <cand>.attempt<n>.json   the lease's attempts (claim documents)
    ROOT/reports/<run>/.watch/.<cand>.attempt<n>.<watcher id>/      the attempt's scratch folder

The holder heartbeats the lease from its main loop; a lease whose heartbeat stopped (or whose watcher on this host is
gone) is taken over, and the takeover deletes the old scratch folder first, so a watcher that was only paused finds
nothing to publish from. Reports are written into the scratch folder and moved into place from it: the CSV and HTML
by rename, the JSON last by a hard link, which never replaces a report. When the pair is done the lease and its
scratch are removed; everything under ``.watch/`` is the watchers' own and nothing else is ever removed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time

from protocol import JobError, SharedFolder
from protocol.claims import OWNER_MARK, Claim, ClaimSite, read_current_claim, stale_reason, take_over, try_claim
from protocol.folder import pid_alive, remove_dead_temp_files
from protocol.jobs import read_job

WATCH_DIR = ".watch"
_SCRATCH_RE = re.compile(r"^\.(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*)\.attempt(?P<attempt>[1-9][0-9]*)\."
                         r"(?P<id>[A-Za-z0-9_-]+)(?P<stale>\.stale)?$")
_LEASE_RE = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:\.attempt(?P<attempt>[1-9][0-9]*))?\.json$")
_TMP_RE = re.compile(r"^\..+\.[0-9]+(?:\.[0-9a-f]+)?\.tmp$")  # atomic_write_json / create_exclusive_json temp files
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: temp files of the reports (JSON, CSV, HTML, error reports) that earlier versions wrote beside them
_REPORT_TMP_RE = re.compile(rf"^\.(?:{_NAME}__vs__{_NAME}\.(?:json|csv|html)|{_NAME}\.error\.json)"
                            r"(?:\.[A-Za-z0-9][A-Za-z0-9.-]*)?\.[0-9]+(?:\.[0-9a-f]+)?\.tmp$")
_PRIVATE_RE = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*\.private\.[A-Za-z0-9_]+$")  # analyses without a lease
_RANK_RE = re.compile(r"\.rank[0-9]+$")
_LEGACY_SCRATCH_RE = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*__vs__[A-Za-z0-9][A-Za-z0-9_.-]*\.csv\.[0-9]+$")


def lease_site(folder: SharedFolder, run_id: str, candidate: str) -> ClaimSite:
    """Where the lease on (run, candidate) lives; its scratch folders are marked (see ClaimSite.marked)."""
    watch = os.path.join(folder.report_dir(run_id), WATCH_DIR)
    return ClaimSite(folder.root, watch, run_id, candidate, watch, stale_name=None, marked=True)


def acquire_lease(site: ClaimSite, me: dict, timeout: float) -> tuple[Claim | None, str | None]:
    """Take the lease on a pair: a new one, or a stale one over.

    Returns:
        ``(lease, None)`` when this watcher holds it now (``lease.taken_over`` says from whom, if anyone);
        ``(None, holder)`` when another watcher holds it (holder: ``host:pid``); ``(None, None)`` when it changed
        under us (try again later).
    """
    try:
        seen = read_current_claim(site)
    except JobError:
        return None, None  # released right now, or a damaged file: the next scan sees
    if seen is None:
        return try_claim(site, me), None
    reason = stale_reason(seen, timeout, me)
    if reason is None:
        return None, f"{seen.agent.get('host')}:{seen.agent.get('pid')}"
    return take_over(site, seen, me, reason), None


def release_lease(site: ClaimSite, lease: Claim) -> None:
    """Remove the lease's scratch folder and every attempt of the lease (latest first): the pair is done, or this
    watcher gives it up. Only files under ``.watch/`` are removed.

    Scratch folders of earlier attempts, or of watchers that lost the race for an attempt up to this one and were
    killed before removing theirs, go too: none of them can be a holder's any more.
    """
    shutil.rmtree(site.work_dir(lease), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(site.work_parent):
            m = _SCRATCH_RE.match(name)
            if m and m.group("label") == site.label and int(m.group("attempt")) <= lease.attempt:
                shutil.rmtree(os.path.join(site.work_parent, name), ignore_errors=True)
    for attempt in range(max(site.latest_attempt(), lease.attempt), 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(site.claim_path(attempt))
    with contextlib.suppress(OSError):  # only when empty; a watcher making a lease now makes it again
        os.rmdir(site.claim_dir)


def pair_done(folder: SharedFolder, run_id: str, reference: str, candidate: str) -> bool:
    """Whether the pair (labels with their ``.rank<r>`` suffix, if any) has its JSON report, or either dump has an
    error report: nothing is left to do for it."""
    return (os.path.exists(folder.pair_report_base(run_id, reference, candidate) + ".json")
            or any(os.path.exists(folder.error_report_path(run_id, label)) for label in (reference, candidate)))


def sweep_leftovers(folder: SharedFolder, me: dict, timeout: float) -> int:
    """Remove what watchers that were killed left in ROOT/reports/*/: scratch folders of leases that are done,
    stale, superseded or gone; the leases of pairs that are done; temporary files older than ``timeout``; and
    the CSV scratch folders of earlier versions (``.<ref>__vs__<cand>.csv.<pid>``) older than ``timeout``.

    A live watcher's lease and scratch (also on another host) are left alone, and nothing that is not a watcher's
    own scratch by its name is touched: no report, no dump, no file of a user.

    Returns:
        How many files and folders were removed.
    """
    removed = 0
    reports = folder.sub("reports")
    try:
        runs = sorted(os.listdir(reports))
    except FileNotFoundError:
        return 0
    for run_id in runs:
        run_dir = os.path.join(reports, run_id)
        if run_id.startswith(".") or not os.path.isdir(run_dir):
            continue
        try:
            removed += _sweep_legacy(run_dir, timeout)
            if os.path.isdir(os.path.join(run_dir, WATCH_DIR)):
                removed += _sweep_run(folder, run_id, me, timeout)
        except FileNotFoundError:  # removed meanwhile (by a user, or by another watcher's clean-up)
            continue
    return removed


def _old(path: str, timeout: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > timeout
    except FileNotFoundError:
        return False


def _maker_dead(scratch: str) -> bool:
    """Whether the scratch folder's owner mark names a process on this host that is gone."""
    try:
        with open(os.path.join(scratch, OWNER_MARK), encoding="utf-8") as fh:
            host, pid = fh.read().split()[:2]
    except (OSError, ValueError):
        return False  # no mark yet (or unreadable): leave it to the age test
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def _remove(path: str) -> int:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 1


def _sweep_legacy(run_dir: str, timeout: float) -> int:
    removed = len(remove_dead_temp_files(run_dir))
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if (_LEGACY_SCRATCH_RE.match(name) and os.path.isdir(path)) or _REPORT_TMP_RE.match(name):
            if _old(path, timeout):
                removed += _remove(path)
    return removed


def _sweep_run(folder: SharedFolder, run_id: str, me: dict, timeout: float) -> int:
    watch = os.path.join(folder.report_dir(run_id), WATCH_DIR)
    try:
        reference = read_job(folder.job_path(run_id)).reference
    except JobError:
        reference = None  # no job to say which pairs are done: only scratch of dead leases goes
    removed = 0
    names = os.listdir(watch)
    labels = {m.group("label") for m in map(_LEASE_RE.match, names) if m}
    labels |= {m.group("label") for m in map(_SCRATCH_RE.match, names) if m}
    for label in sorted(labels):
        site = lease_site(folder, run_id, label)
        try:
            current = read_current_claim(site)
        except JobError:
            current = None
        rank = _RANK_RE.search(label)
        done = reference is not None and pair_done(folder, run_id, reference + (rank.group(0) if rank else ""), label)
        live = current is not None and not done and stale_reason(current, timeout, me) is None
        for name in names:
            m = _SCRATCH_RE.match(name)
            if not m or m.group("label") != label:
                continue
            path = os.path.join(watch, name)
            attempt = int(m.group("attempt"))
            mine = current is not None and attempt == current.attempt and m.group("id") == current.agent.get("id")
            if current is None or attempt > current.attempt:  # no lease yet: a watcher may be making it right now
                gone = done or _old(path, timeout) or _maker_dead(path)
            else:
                gone = done or m.group("stale") or not (mine and live)
            if gone:
                removed += _remove(path)
        if done:
            for name in names:
                m = _LEASE_RE.match(name)
                if m and m.group("label") == label:
                    removed += _remove(os.path.join(watch, name))
    removed += len(remove_dead_temp_files(watch))  # of dead watchers on this host: at once
    for name in names:  # of anyone else (other hosts, earlier versions): when older than the timeout
        if (_TMP_RE.match(name) or _PRIVATE_RE.match(name)) and _old(os.path.join(watch, name), timeout):
            removed += _remove(os.path.join(watch, name))
    with contextlib.suppress(OSError):
        os.rmdir(watch)
    return removed
