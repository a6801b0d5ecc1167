"""Claims: who captures (run, label) in a shared folder, and how a stale claim is taken over (SPEC.md 13.2, 13.4).

Every attempt at a claim is a file of its own, created exclusively and afterwards written only by its owner:

    ROOT/claims/<run_id>/<label>.json              attempt 1
    ROOT/claims/<run_id>/<label>.attempt<n>.json   attempt n >= 2, made by the agent that took over attempt n-1
    ROOT/dumps/<run_id>/.<label>.attempt<n>.<id>/  the work folder of attempt n (id: its agent's), made before
                                                   the claim; the dump is written there and published from there

The current claim is the attempt with the highest number. No process ever replaces or removes another's claim file,
which is what makes the protocol safe against an owner that was paused (SIGSTOP, a suspended VM, a long GC) past
the heartbeat timeout, taken over, and resumed:

- Exactly one agent makes each attempt: of several racing, one creates the file (a hard link, also on NFS).
- An owner's heartbeats and its done/failed record go to its own attempt's file. A late write of a resumed former
  owner lands in a superseded file and cannot touch the new owner's claim.
- A takeover moves the previous attempt's work folder aside (a rename) *before* it creates the next attempt, and an
  owner publishes by hard-linking the finished dump from its work folder to ``dumps/<run_id>/<label>.h5``, which never
  replaces a file. So once attempt n+1 exists, attempt n has nothing left to publish from: its link fails. The work
  folder exists before its claim does, so this holds also for an owner that had not started writing.

Claim document (``format_version`` 2.0: the attempt files above; 1.0 kept one claim file and moved attempts aside):

=================  ==========================================================================================
field              meaning
=================  ==========================================================================================
format             ``"tensorparity.claim"``
format_version     ``"2.0"``
run_id, label      what is claimed
status             ``"running"`` | ``"done"`` | ``"failed"``
agent              ``{"host", "pid", "id"}`` of the owner (id: random per agent process, 1-64 of ``[A-Za-z0-9_-]``)
started            ISO 8601 UTC time the attempt was made
heartbeat          ISO 8601 UTC time of the owner's last sign of life (refreshed while running)
finished           ISO 8601 UTC time of done/failed, else null
error              the error message when failed (``"abandoned"`` when the agent was stopped), else null
attempt            1 for the first claim, n+1 for the takeover of attempt n (the file name says it too)
dump               the dump's path relative to ROOT once done, else null
taken_over         null, or ``{"previous_claim", "previous_agent", "reason", "stale_files"}`` for a takeover;
                   stale_files lists what the previous attempt left in its work folder, which was moved aside as
                   ``dumps/<run_id>/<label>.h5.stale-<n>/`` (kept, never read)
=================  ==========================================================================================

The same machinery (a ClaimSite elsewhere, with scratch folders instead of dumps) is the watcher's lease on a pair
(analyze/watch_leases.py).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import uuid
from dataclasses import asdict, dataclass, field, fields

from .errors import CaptureError, JobError
from .folder import (
    SharedFolder, atomic_write_json, check_name, create_exclusive_json, link_no_replace, pid_alive, read_json,
    remove_dead_temp_files,
)
from .jobs import _check_keys, _check_version, _expect, seconds_since, utc_now

CLAIM_FORMAT = "tensorparity.claim"
CLAIM_FORMAT_VERSION = "2.0"
CLAIM_STATES = ("running", "done", "failed")
ABANDONED = "abandoned"
OWNER_MARK = ".owner"  # in a marked work folder: "<host> <pid> <id> <attempt>", present while it is where it was made
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Claim:
    """One attempt at a claim on (run, label) (see the table at the top of this module)."""

    run_id: str
    label: str
    agent: dict
    status: str = "running"
    attempt: int = 1
    started: str = field(default_factory=utc_now)
    heartbeat: str = field(default_factory=utc_now)
    finished: str | None = None
    error: str | None = None
    dump: str | None = None
    taken_over: dict | None = None
    format: str = CLAIM_FORMAT
    format_version: str = CLAIM_FORMAT_VERSION

    def validate(self, path: str | None = None) -> "Claim":
        """Raises JobError naming the field that is wrong."""
        check_name(self.run_id, "run id")
        check_name(self.label, "label")
        _expect(self.status in CLAIM_STATES, f"unknown claim status {self.status!r}", path)
        _expect(isinstance(self.agent, dict) and {"host", "pid", "id"} <= set(self.agent),
                "claim agent must be {host, pid, id}", path)
        # the id names the attempt's work folder: it must not be able to point anywhere else
        _expect(isinstance(self.agent["id"], str) and _AGENT_ID_RE.match(self.agent["id"]) is not None,
                f"claim agent id {self.agent['id']!r} is not 1-64 letters, digits, '_' or '-'", path)
        _expect(isinstance(self.attempt, int) and not isinstance(self.attempt, bool) and self.attempt >= 1,
                f"claim attempt {self.attempt!r} is not an integer >= 1", path)
        for name in ("started", "heartbeat"):
            try:
                seconds_since(getattr(self, name))
            except (TypeError, ValueError):
                raise JobError(f"claim {name} {getattr(self, name)!r} is not an ISO 8601 time", path) from None
        for name in ("finished", "error", "dump"):
            _expect(getattr(self, name) is None or isinstance(getattr(self, name), str),
                    f"claim {name} must be a string or null", path)
        _expect(self.taken_over is None or isinstance(self.taken_over, dict), "taken_over must be an object", path)
        return self

    def owned_by(self, agent: dict) -> bool:
        """Whether ``agent`` (``{"host", "pid", "id"}``) made this claim."""
        return self.agent.get("id") == agent.get("id")

    def to_dict(self) -> dict:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data, path: str | None = None) -> "Claim":
        """Validate a parsed claim document. Raises JobError."""
        _expect(isinstance(data, dict), "a claim must be a JSON object", path)
        newer = _check_version(data, CLAIM_FORMAT, "claim", path, CLAIM_FORMAT_VERSION)
        known = {f.name for f in fields(cls)}
        _check_keys(data, known, newer, "claim", path)
        missing = sorted({"run_id", "label", "agent", "status"} - set(data))
        _expect(not missing, f"claim lacks field(s) {missing}", path)
        return cls(**{k: v for k, v in data.items() if k in known}).validate(path)


def read_claim(path: str | os.PathLike) -> Claim:
    """Read and validate one claim file. Raises JobError (also when missing)."""
    path = os.fspath(path)
    return Claim.from_dict(read_json(path, "claim"), path)


def new_agent_identity() -> dict:
    """``{"host", "pid", "id"}`` of this process, the id random so that a restarted agent is a new owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:12]}


@dataclass(frozen=True)
class ClaimSite:
    """Where the attempts of one claim live, and where their work folders are made.

    Attributes:
        root: the shared folder (paths in claims are relative to it).
        claim_dir: the folder of the attempt files.
        run_id, label: what is claimed.
        work_parent: the folder in which each attempt's work folder is made.
        stale_name: the name (a format string of ``label`` and ``attempt``) under which a taken-over attempt's work
            folder is kept in ``work_parent``; None to delete it (scratch that is cheap to make again).
        marked: put an OWNER_MARK file in each work folder (for writers that may bring a moved folder back).
    """

    root: str
    claim_dir: str
    run_id: str
    label: str
    work_parent: str
    stale_name: str | None = "{label}.h5.stale-{attempt}"
    marked: bool = False

    @classmethod
    def capture(cls, folder: SharedFolder, run_id: str, label: str) -> "ClaimSite":
        """The agents' claim on (run, label): attempts in ROOT/claims/<run_id>/, work folders in ROOT/dumps/<run_id>/.

        Raises:
            JobError: an invalid run id or label.
        """
        claim_dir = os.path.dirname(folder.claim_path(run_id, label))
        return cls(folder.root, claim_dir, run_id, label, os.path.dirname(folder.dump_path(run_id, label)))

    def claim_path(self, attempt: int) -> str:
        """The file of one attempt: ``<label>.json`` for the first, ``<label>.attempt<n>.json`` after."""
        name = f"{self.label}.json" if attempt == 1 else f"{self.label}.attempt{int(attempt)}.json"
        return os.path.join(self.claim_dir, name)

    def latest_attempt(self) -> int:
        """The highest attempt whose file exists, 0 when there is none.

        A folder listing, not a walk from attempt 1: a caching client (NFS) may list a new file late, which only
        makes an agent try to create an attempt that exists, and fail.
        """
        try:
            names = os.listdir(self.claim_dir)
        except FileNotFoundError:
            return 0
        pattern = re.compile(re.escape(self.label) + r"\.attempt([1-9][0-9]*)\.json")
        latest = 1 if f"{self.label}.json" in names else 0
        for name in names:
            m = pattern.fullmatch(name)
            if m:
                latest = max(latest, int(m.group(1)))
        return latest

    def work_dir(self, claim: Claim) -> str:
        """The work folder of one attempt (made by ``try_claim`` or ``take_over`` before the claim file)."""
        check_name(self.label, "label")
        if not _AGENT_ID_RE.match(str(claim.agent.get("id"))):
            raise JobError(f"claim agent id {claim.agent.get('id')!r} is not 1-64 letters, digits, '_' or '-'")
        return os.path.join(self.work_parent, f".{self.label}.attempt{int(claim.attempt)}.{claim.agent['id']}")


def read_current_claim(site: ClaimSite) -> Claim | None:
    """The attempt with the highest number, or None when (run, label) was never claimed.

    Raises:
        JobError: that attempt's file is invalid (or vanished: a watcher's lease that was just released).
    """
    latest = site.latest_attempt()
    return read_claim(site.claim_path(latest)) if latest else None


# -- the claim protocol --------------------------------------------------------------------------------------------

_write_lock = threading.Lock()  # atomic_write_json's temp name is per process: one writer at a time


def stale_reason(claim: Claim, timeout: float, me: dict | None = None) -> str | None:
    """Why ``claim`` may be taken over, or None when it may not.

    A running claim is stale when its heartbeat is older than ``timeout`` seconds, or at once when it was made on
    this host by a process that no longer exists (a restarted agent resumes without waiting). A claim its agent
    abandoned (stopped by a signal) may be taken over too. Done claims and other failures are final.
    """
    if claim.status == "failed" and claim.error == ABANDONED:
        return "abandoned by its agent"
    if claim.status != "running":
        return None
    age = seconds_since(claim.heartbeat)
    if age > timeout:
        return f"heartbeat {age:.0f} s old (timeout {timeout:g} s)"
    me = me or {}
    pid = claim.agent.get("pid")
    if claim.agent.get("host") == socket.gethostname() and isinstance(pid, int) and claim.agent.get("id") != me.get(
            "id") and (pid == os.getpid() or not pid_alive(pid)):
        return f"its owner (pid {pid} on this host) is gone"
    return None


def try_claim(site: ClaimSite, agent: dict, *, failed: str | None = None) -> Claim | None:
    """Claim (run, label) by creating attempt 1 exclusively, after its work folder.

    Args:
        site: where the claim lives.
        agent: the new owner's identity.
        failed: make the claim as failed with this error at once (a job refused without running), no work folder.

    Returns:
        The claim, or None when another agent holds it.
    """
    claim = Claim(site.run_id, site.label, dict(agent))
    if failed is not None:
        claim.status, claim.error, claim.finished = "failed", failed, utc_now()
        return claim if create_exclusive_json(site.claim_path(1), claim.to_dict()) else None
    return _make_attempt(site, claim)


def take_over(site: ClaimSite, seen: Claim, agent: dict, reason: str) -> Claim | None:
    """Take over a stale claim (attempt n, as ``seen``); among agents racing on it exactly one wins.

    It backs off when attempt n+1 exists or attempt n changed since it was seen (its owner is alive). Otherwise it
    moves attempt n's work folder aside (fencing that owner: from now on it cannot publish), then makes its own
    work folder and creates attempt n+1 exclusively: the winner is the agent whose creation succeeds.

    Returns:
        The new claim, or None when another agent won, the claim changed, or it is not stale any more.

    Raises:
        JobError: the previous attempt's work folder cannot be moved aside (its stale name is taken).
    """
    if site.latest_attempt() != seen.attempt:
        return None
    try:
        again = read_claim(site.claim_path(seen.attempt))
    except JobError:
        return None
    if again.to_dict() != seen.to_dict():
        return None  # a heartbeat or a result since it was seen: its owner is alive
    stale_files = _fence(site, seen)
    remove_dead_temp_files(site.claim_dir)  # a killed owner's half-written heartbeat, if any
    claim = Claim(site.run_id, site.label, dict(agent), attempt=seen.attempt + 1, taken_over={
        "previous_claim": os.path.basename(site.claim_path(seen.attempt)), "previous_agent": seen.agent,
        "reason": reason, "stale_files": stale_files})
    return _make_attempt(site, claim)


def _make_attempt(site: ClaimSite, claim: Claim) -> Claim | None:
    """Make the attempt's work folder, then its claim file exclusively; on losing, remove the (empty) folder."""
    work = site.work_dir(claim)
    for _ in range(3):  # a watcher may remove an empty work parent between makedirs and mkdir: make it again
        os.makedirs(site.work_parent, exist_ok=True)
        try:
            os.mkdir(work)
            break
        except FileNotFoundError:
            continue
    else:
        os.mkdir(work)
    if site.marked:  # who made it: a clean-up can tell a dead maker's folder from one whose claim is being made
        with open(os.path.join(work, OWNER_MARK), "x", encoding="utf-8") as fh:
            fh.write(f"{claim.agent['host']} {claim.agent['pid']} {claim.agent['id']} {claim.attempt}\n")
    if create_exclusive_json(site.claim_path(claim.attempt), claim.to_dict()):
        return claim
    discard_work_dir(site, claim)
    return None


def _fence(site: ClaimSite, seen: Claim) -> list[str]:
    """Move attempt ``seen``'s work folder aside; returns what it holds (paths relative to ROOT) when kept.

    Racing agents all try; the first rename moves it, the others find it gone and list the moved folder. A folder
    already gone was cleaned up by its owner (it published or gave up) or moved by another agent.
    """
    src = site.work_dir(seen)
    if site.stale_name is None:
        dst = f"{src}.stale"
        with contextlib.suppress(FileNotFoundError):
            os.rename(src, dst)
        shutil.rmtree(dst, ignore_errors=True)
        return []
    dst = os.path.join(site.work_parent, site.stale_name.format(label=site.label, attempt=seen.attempt))
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the stale name is taken by a file or a non-empty folder: cannot fence, so no takeover
        raise JobError(f"cannot move the work folder of attempt {seen.attempt} aside ({exc.strerror})", dst,
                       "move this file or folder away; the takeover is retried") from None
    try:
        names = sorted(n for n in os.listdir(dst) if n != OWNER_MARK)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not names:
        with contextlib.suppress(OSError):  # empty: nothing to keep (an agent stopped before writing)
            os.rmdir(dst)
        return []
    return [os.path.relpath(os.path.join(dst, n), site.root) for n in names]


def holds(site: ClaimSite, claim: Claim) -> bool:
    """Whether ``claim`` is still the current attempt (no later one exists) and its file is still its owner's."""
    if site.latest_attempt() != claim.attempt:
        return False
    try:
        current = read_claim(site.claim_path(claim.attempt))
    except JobError:
        return False
    return current.owned_by(claim.agent) and current.attempt == claim.attempt


def update_claim(site: ClaimSite, claim: Claim, **changes) -> bool:
    """Rewrite the owner's own attempt file (heartbeat, done, failed). Returns False, writing nothing, when the
    attempt is not the current one any more (it was taken over).

    The check and the write are not one step: a takeover between them makes this write land in the superseded
    attempt's file, which is harmless, since no other process writes that file and readers use the latest attempt.
    """
    with _write_lock:
        if not holds(site, claim):
            return False
        for name, value in changes.items():
            setattr(claim, name, value)
        claim.validate(site.claim_path(claim.attempt))
        atomic_write_json(site.claim_path(claim.attempt), claim.to_dict())
    return True


def publish_work(site: ClaimSite, claim: Claim, name: str, final: str) -> bool:
    """Publish the file ``name`` of the attempt's work folder as ``final`` (a hard link, which never replaces a
    file), then drop the work name and the work folder.

    Returns:
        True when published; False when a takeover moved the work folder aside (nothing was published).

    Raises:
        CaptureError: a file exists under the final name already (the work file is kept where it is).
    """
    work = os.path.join(site.work_dir(claim), name)
    try:
        if not link_no_replace(work, final):
            raise CaptureError("a dump of this label exists already; this capture is kept aside", work)
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(work)
    discard_work_dir(site, claim)
    return True


def discard_work_dir(site: ClaimSite, claim: Claim) -> None:
    """Remove the attempt's work folder if nothing but its mark is left in it (never a dump or partial file)."""
    work = site.work_dir(claim)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(work, OWNER_MARK))
    with contextlib.suppress(OSError):
        os.rmdir(work)
