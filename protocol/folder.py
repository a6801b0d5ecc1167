"""The shared dump folder (SPEC.md section 13): layout, names, atomic JSON writes, exclusive creation, hard links.

    ROOT/inputs/<sha256>.h5            ROOT/jobs/<run_id>.json
    ROOT/claims/<run_id>/<label>.json  (and <label>.attempt<n>.json: protocol/claims.py)
    ROOT/dumps/<run_id>/<label>.h5     (one per rank: <label>.rank<r>.h5)
    ROOT/reports/<run_id>/<ref>__vs__<cand>.{json,csv,html}, <label>.error.json

Temporary files are named ``.<name>.<host>.<pid>[.<hex>].tmp`` (``temp_name``), so that a later start can remove
those of dead processes on its host (``remove_dead_temp_files``) without touching a live writer's.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid

from .errors import JobError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DUMP_NAME_RE = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:\.rank(?P<rank>\d+))?\.h5$")
_ATTEMPT_END_RE = re.compile(r"\.attempt[0-9]+$")
SUBDIRS = ("inputs", "jobs", "claims", "dumps", "reports")


def check_name(name: str, what: str) -> str:
    """Validate a run id or label: letters, digits, ``_ . -``, at most 128 characters, no ``..``, and no ending that
    names another file (``.h5``, ``.json``, or ``.attempt<n>``, which would be a later attempt of another claim).

    Raises:
        JobError: the name could escape its folder or is otherwise unusable as a file name.
    """
    if (not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or name.endswith((".h5", ".json"))
            or _ATTEMPT_END_RE.search(name)):
        raise JobError(f"invalid {what} {name!r}",
                       hint=f"a {what} is 1-128 letters, digits, '_', '.', '-', starts with a letter or digit, "
                            "has no '..' and does not end in .h5, .json or .attempt<n>")
    return name


def resolve_inside(root: str, relative: str, what: str) -> str:
    """Resolve a path that a job names relative to ROOT, refusing absolute paths and anything escaping ROOT."""
    if not isinstance(relative, str) or not relative:
        raise JobError(f"{what} is missing or not a string")
    if os.path.isabs(relative) or relative.startswith(("~", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise JobError(f"{what} {relative!r} is an absolute path", hint="paths in a job are relative to ROOT")
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, full]) != root_real:
        raise JobError(f"{what} {relative!r} escapes the shared folder", hint="paths in a job stay inside ROOT")
    return full


class SharedFolder:
    """Paths of a shared folder ROOT; every name is validated before it becomes a path."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))

    def ensure_layout(self) -> "SharedFolder":
        """Create ROOT and its sub-folders if missing."""
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        return self

    def sub(self, name: str) -> str:
        """One of the top-level sub-folders."""
        assert name in SUBDIRS
        return os.path.join(self.root, name)

    def input_path(self, sha256: str) -> str:
        """ROOT/inputs/<sha256>.h5."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise JobError(f"invalid input set sha256 {sha256!r}")
        return os.path.join(self.root, "inputs", f"{sha256}.h5")

    def job_path(self, run_id: str) -> str:
        """ROOT/jobs/<run_id>.json."""
        return os.path.join(self.root, "jobs", f"{check_name(run_id, 'run id')}.json")

    def claim_path(self, run_id: str, label: str) -> str:
        """ROOT/claims/<run_id>/<label>.json."""
        return os.path.join(self.root, "claims", check_name(run_id, "run id"), f"{check_name(label, 'label')}.json")

    def dump_path(self, run_id: str, label: str, rank: int | None = None) -> str:
        """ROOT/dumps/<run_id>/<label>.h5, or <label>.rank<r>.h5 for multi-rank captures."""
        name = check_name(label, "label") + (f".rank{int(rank)}" if rank is not None else "") + ".h5"
        return os.path.join(self.root, "dumps", check_name(run_id, "run id"), name)

    def report_dir(self, run_id: str) -> str:
        """ROOT/reports/<run_id>/."""
        return os.path.join(self.root, "reports", check_name(run_id, "run id"))

    def pair_report_base(self, run_id: str, reference: str, candidate: str) -> str:
        """ROOT/reports/<run_id>/<ref>__vs__<cand> (add .json, .csv or .html)."""
        return os.path.join(self.report_dir(run_id),
                            f"{check_name(reference, 'label')}__vs__{check_name(candidate, 'label')}")

    def error_report_path(self, run_id: str, label: str) -> str:
        """ROOT/reports/<run_id>/<label>.error.json."""
        return os.path.join(self.report_dir(run_id), f"{check_name(label, 'label')}.error.json")


def parse_dump_name(filename: str) -> tuple[str, int | None] | None:
    """``(label, rank)`` of a dump file name in dumps/<run_id>/, or None for anything else (partials included)."""
    m = _DUMP_NAME_RE.match(os.path.basename(filename))
    if not m:
        return None
    return m.group("label"), (int(m.group("rank")) if m.group("rank") is not None else None)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON so that readers see the old file or the new one, never a torn one (temp file, fsync, replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, temp_name(path))
    with open(tmp, "w", encoding="utf-8") as fh:
        _dump(obj, fh)
    os.replace(tmp, path)


def write_new_json(path: str | os.PathLike, obj) -> None:
    """Create a JSON file that must not exist yet, in a folder that must exist (fsynced; no temporary file).

    For files that no reader sees under this name (work and scratch files), and which must never bring a folder
    back that a takeover moved away: nothing here creates a folder.

    Raises:
        FileExistsError: the file exists.
        FileNotFoundError: its folder does not exist (any more).
    """
    with open(os.fspath(path), "x", encoding="utf-8") as fh:
        _dump(obj, fh)


def _dump(obj, fh) -> None:
    json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=True)
    fh.write("\n")
    fh.flush()
    os.fsync(fh.fileno())


def link_no_replace(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Give the file ``src`` the second name ``dst`` unless a file of that name exists: a hard link never replaces
    a file, so of several processes linking to one name exactly one succeeds.

    Returns:
        True when ``dst`` is now ``src``; False when another file has that name.

    Raises:
        FileNotFoundError: ``src`` is gone (for a work file: moved aside by a takeover).
        OSError: the filesystem has no hard links (the daemons refuse such a folder at start, protocol/fsprobe.py).
    """
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        # NFS: when the reply to a LINK is lost, the client retransmits it and the server answers EEXIST although
        # the first one made the link (see open(2) on O_EXCL): the same file under both names means it is ours
        try:
            return os.path.samestat(os.stat(src), os.stat(dst))
        except FileNotFoundError:
            return False


def create_exclusive_json(path: str | os.PathLike, obj) -> bool:
    """Create a JSON file only if no file of that name exists. Returns False when another got there first.

    The document is written to a temporary file and hard-linked into place, so a reader never sees it half written.
    Where there are no hard links (``parity submit`` on such a folder; the daemons refuse it), O_EXCL creation of
    the final name is the fallback, which a reader may see half written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, temp_name(path, unique=True))
    write_new_json(tmp, obj)
    try:
        return link_no_replace(tmp, path)
    except FileNotFoundError:
        raise
    except OSError:  # no hard links here: fall back to O_EXCL creation of the final name
        try:
            write_new_json(path, obj)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def temp_name(path: str | os.PathLike, *, unique: bool = False) -> str:
    """The name of a temporary file for ``path``: ``.<name>.<host>.<pid>[.<hex>].tmp``, so that the clean-up of a
    later start can tell the temporary files of dead processes on its host from those of live writers anywhere.

    Args:
        unique: add a random part (several writers of one name in one process).
    """
    extra = f".{uuid.uuid4().hex[:8]}" if unique else ""
    return f".{os.path.basename(os.fspath(path))}.{socket.gethostname()}.{os.getpid()}{extra}.tmp"


def remove_dead_temp_files(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files (``temp_name``) in ``folder`` of processes on this host that are gone.

    Returns:
        The names removed.
    """
    removed = []
    mine = re.compile(r"^\..+\." + re.escape(socket.gethostname()) + r"\.(?P<pid>[0-9]+)(?:\.[0-9a-f]{8})?\.tmp$")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        m = mine.match(name)
        if m and not pid_alive(int(m.group("pid"))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def read_json(path: str | os.PathLike, what: str, *, error: type = JobError, hint: str = "fix or remove the file",
              missing_hint: str | None = None):
    """Read a JSON document; ``error`` (JobError, or another ParityError class) naming the file, the problem and
    ``hint`` when it is missing, a folder or not JSON."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise error(f"{what} not found", path, missing_hint) from None
    except IsADirectoryError:
        raise error(f"{what} is a folder, not a file", path, "pass the JSON file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON ({exc})", path, hint) from None
