"""The shared dump folder (SPEC.md section 11): layout, names, atomic JSON writes, exclusive claims.

    ROOT/inputs/<sha256>.h5            ROOT/jobs/<run_id>.json          ROOT/claims/<run_id>/<label>.json
    ROOT/dumps/<run_id>/<label>.h5     (one per rank: <label>.rank<r>.h5)
    ROOT/reports/<run_id>/<ref>__vs__<cand>.{json,csv,html}, <label>.error.json
"""
from __future__ import annotations

import json
import os
import re

from .errors import JobError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DUMP_NAME_RE = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:\.rank(?P<rank>\d+))?\.h5$")
SUBDIRS = ("inputs", "jobs", "claims", "dumps", "reports")


def check_name(name: str, what: str) -> str:
    """Validate a run id or label: letters, digits, ``_ . -``, at most 128 characters, no ``..``.

    Raises:
        JobError: the name could escape its folder or is otherwise unusable as a file name.
    """
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or name.endswith((".h5", ".json")):
        raise JobError(f"invalid {what} {name!r}",
                       hint=f"a {what} is 1-128 letters, digits, '_', '.', '-', starts with a letter or digit, "
                            "has no '..' and does not end in .h5 or .json")
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
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def create_exclusive_json(path: str | os.PathLike, obj) -> bool:
    """Create a JSON file only if no file of that name exists (O_EXCL). Returns False when another got there first.

    The document is written to a temporary file and hard-linked into place, so a reader never sees it half written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{id(obj)}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: fall back to O_EXCL creation of the final name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        return True
    finally:
        os.unlink(tmp)


def read_json(path: str | os.PathLike, what: str):
    """Read a JSON document; JobError naming the file when missing or malformed."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise JobError(f"{what} not found", path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobError(f"{what} is not valid JSON ({exc})", path, "fix or remove the file") from None
