"""What a shared folder holds: runs, labels, claim states, dumps, reports and verdicts (``parity status``)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

from protocol import JobError, SharedFolder, parse_dump_name
from protocol.claims import ClaimSite, read_current_claim, stale_reason
from protocol.jobs import read_job, seconds_since

_ATTEMPT_RE = re.compile(r"\.attempt\d+$")  # later attempts of a claim: <label>.attempt<n>.json


@dataclass
class LabelStatus:
    """One label of one run.

    Attributes:
        label: the label; role: ``reference`` or ``candidate``.
        claim: ``none``, ``running``, ``stale``, ``done``, ``failed``, or ``invalid`` (an unreadable claim).
        attempt, agent (``host:pid``), heartbeat_age (seconds), error: from the claim.
        dump: the dump's path relative to ROOT when it is in place.
        report: the pair report's path relative to ROOT (candidates); verdict, first_divergence: read from it.
        unusable: the message of ``<label>.error.json`` when the watcher could not use the dump.
    """

    label: str
    role: str
    claim: str = "none"
    attempt: int | None = None
    agent: str | None = None
    heartbeat_age: float | None = None
    error: str | None = None
    dump: str | None = None
    report: str | None = None
    verdict: str | None = None
    first_divergence: str | None = None
    unusable: str | None = None


@dataclass
class RunStatus:
    """One run: its job (or why it is invalid) and its labels."""

    run_id: str
    reference: str | None
    job_error: str | None = None
    labels: list[LabelStatus] = field(default_factory=list)


def collect_status(root: str, *, heartbeat_timeout: float = 120.0) -> list[RunStatus]:
    """Read every job, claim, dump and report of a shared folder (reads JSON documents only, never a dump).

    Args:
        root: the shared folder.
        heartbeat_timeout: a running claim with an older heartbeat is shown as ``stale``.

    Raises:
        JobError: ROOT is not a folder.
    """
    if not os.path.isdir(root):
        raise JobError("shared folder not found", root)
    folder = SharedFolder(root)
    runs = set()
    for sub, suffix in (("jobs", ".json"), ("dumps", ""), ("claims", ""), ("reports", "")):
        path = os.path.join(folder.root, sub)
        for name in os.listdir(path) if os.path.isdir(path) else []:
            if name.startswith(".") or not name.endswith(suffix):
                continue
            runs.add(name[:-len(suffix)] if suffix else name)
    return [_run_status(folder, run_id, heartbeat_timeout) for run_id in sorted(runs)]


def _run_status(folder: SharedFolder, run_id: str, timeout: float) -> RunStatus:
    try:
        job = read_job(folder.job_path(run_id))
    except JobError as exc:
        status = RunStatus(run_id, None, job_error=exc.message)
        labels: list[str] = []
    else:
        status = RunStatus(run_id, job.reference)
        labels = list(job.labels)
    claim_dir = os.path.join(folder.sub("claims"), run_id)
    for name in sorted(os.listdir(claim_dir)) if os.path.isdir(claim_dir) else []:
        label = name[:-len(".json")]
        if name.endswith(".json") and not name.startswith(".") and not _ATTEMPT_RE.search(label) \
                and label not in labels:
            labels.append(label)  # a claim of a label the job does not name (or of a job that is invalid)
    dump_dir = os.path.join(folder.sub("dumps"), run_id)
    present = {}
    for name in sorted(os.listdir(dump_dir)) if os.path.isdir(dump_dir) else []:
        parsed = parse_dump_name(name)
        if parsed is not None:
            present.setdefault(parsed[0], os.path.join("dumps", run_id, name))
            if parsed[0] not in labels:
                labels.append(parsed[0])
    for label in labels:
        entry = LabelStatus(label, "reference" if label == status.reference else "candidate", dump=present.get(label))
        _fill_claim(folder, run_id, entry, timeout)
        _fill_reports(folder, run_id, status.reference, entry)
        status.labels.append(entry)
    return status


def _fill_claim(folder: SharedFolder, run_id: str, entry: LabelStatus, timeout: float) -> None:
    try:
        site = ClaimSite.capture(folder, run_id, entry.label)
    except JobError:
        return
    try:
        claim = read_current_claim(site)  # the latest attempt
    except JobError as exc:
        entry.claim, entry.error = "invalid", exc.message
        return
    if claim is None:
        return
    entry.claim = "stale" if claim.status == "running" and stale_reason(claim, timeout) else claim.status
    entry.attempt, entry.error = claim.attempt, claim.error
    entry.agent = f"{claim.agent.get('host')}:{claim.agent.get('pid')}"
    if claim.status == "running":
        entry.heartbeat_age = round(seconds_since(claim.heartbeat), 1)


def _fill_reports(folder: SharedFolder, run_id: str, reference: str | None, entry: LabelStatus) -> None:
    error_path = folder.error_report_path(run_id, entry.label)
    if os.path.exists(error_path):
        entry.unusable = _read(error_path).get("error", "unreadable error report")
    if reference is None or entry.role == "reference":
        return
    path = folder.pair_report_base(run_id, reference, entry.label) + ".json"
    if os.path.exists(path):
        doc = _read(path)
        entry.report = os.path.relpath(path, folder.root)
        entry.verdict = str(doc.get("verdict", "?"))
        first = doc.get("first_divergence")
        entry.first_divergence = (first.get("site") or first.get("key") or str(first)) if isinstance(
            first, dict) else (str(first) if first else None)


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def status_rows(runs: list[RunStatus]) -> list[dict]:
    """Flat rows (one per run and label) for tables and ``--json``."""
    rows = []
    for run in runs:
        if run.job_error:
            rows.append({"run_id": run.run_id, "label": None, "role": None, "job_error": run.job_error})
        for entry in run.labels:
            rows.append({"run_id": run.run_id, **asdict(entry)})
    return rows
