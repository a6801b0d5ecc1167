"""Does a shared folder's filesystem do what the shared-folder protocol relies on? (SPEC.md section 13.4)

The agents and the watcher call ``probe_folder`` when they start. In a hidden folder of its own under ROOT it
creates a file exclusively (twice: the second must fail), hard-links it (twice: the second must fail, and both names
must be one file), replaces a file by a rename, renames a folder, and removes it all again. A folder where one of
these fails is refused with an UnsupportedFolderError that says which and what to do, instead of failing later in a
way that could capture a job twice or lose a dump.

What a probe cannot see: whether other hosts see the same thing at once (a synced folder's exclusivity holds on each
host alone) and whether the hosts' clocks agree (heartbeats). ``FolderReport`` names what the start-up log line
should warn about.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import uuid
from dataclasses import dataclass

from .errors import UnsupportedFolderError
from .folder import pid_alive

PROBE_PREFIX = ".parity-probe."
_SPEC = "SPEC.md section 13.4"
#: marker files or folders that sync clients keep at (or above) the root of what they sync
_SYNC_MARKERS = ((".stfolder", "Syncthing"), (".dropbox", "Dropbox"), (".dropbox.cache", "Dropbox"),
                 (".sync/ID", "Resilio Sync"))
#: folder names that sync clients give the folders they sync
_SYNC_FOLDER_NAMES = (("OneDrive", "OneDrive"), ("Google Drive", "Google Drive"), ("My Drive", "Google Drive"),
                      ("iCloud Drive", "iCloud Drive"), ("Mobile Documents", "iCloud Drive"))


@dataclass(frozen=True)
class FolderReport:
    """What is known about a shared folder that passed the probe.

    Attributes:
        filesystem: the filesystem type from the mount table (``ext4``, ``nfs4``, ``cifs``, ``fuse.sshfs``...), or
            ``unknown`` where there is none to read.
        sync_client: the sync client that seems to manage the folder (``Dropbox``, ``Syncthing``...), or None.
    """

    filesystem: str
    sync_client: str | None

    def warning(self) -> str | None:
        """The start-up warning for a folder whose guarantees hold on this host only, or None."""
        if self.sync_client is None:
            return None
        return (f"this shared folder looks synced by {self.sync_client}: exclusive creation and hard links hold on "
                f"each host only, not across hosts; run one agent per label and one watcher ({_SPEC})")


def probe_folder(root: str | os.PathLike) -> FolderReport:
    """Check that ``root`` supports exclusive creation, hard links and atomic renames; leave nothing behind.

    Also removes the probe folders of probes on this host whose process is gone (a daemon killed while probing).

    Returns:
        What is known about the folder (for the start-up log line).

    Raises:
        UnsupportedFolderError: an operation the protocol needs fails or misbehaves here; the message names it.
    """
    root = os.path.abspath(os.fspath(root))
    fs = filesystem_of(root)
    remove_probe_leftovers(root)
    probe = os.path.join(root, f"{PROBE_PREFIX}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(probe)
    except OSError as exc:
        raise UnsupportedFolderError(
            f"cannot create files in this folder ({fs}: {exc.strerror})", root,
            "the agents and the watcher write claims, dumps and reports here: mount it read-write and writable "
            "for this user") from None
    try:
        _check_exclusive_creation(probe, root, fs)
        _check_hard_links(probe, root, fs)
        _check_renames(probe, root, fs)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return FolderReport(fs, sync_client_of(root))


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _check_exclusive_creation(probe: str, root: str, fs: str) -> None:
    path = os.path.join(probe, "a")
    try:
        _write(path, b"a")
    except OSError as exc:
        raise UnsupportedFolderError(f"cannot create files in this folder ({fs}: {exc.strerror})", root,
                                     "mount it read-write and writable for this user") from None
    try:
        _write(path, b"b")
    except FileExistsError:
        return
    except OSError as exc:
        raise UnsupportedFolderError(f"exclusive creation fails in this folder ({fs}: {exc.strerror})", root,
                                     f"use a local disk, NFS v3 or later, or SMB ({_SPEC})") from None
    raise UnsupportedFolderError(
        f"exclusive creation (O_EXCL) is not honoured in this folder ({fs}: a second creation of one file succeeded)",
        root, f"claims would not be exclusive: use a local disk, NFS v3 or later, or SMB ({_SPEC})")


def _check_hard_links(probe: str, root: str, fs: str) -> None:
    src, dst = os.path.join(probe, "a"), os.path.join(probe, "b")
    try:
        os.link(src, dst)
    except OSError as exc:
        raise UnsupportedFolderError(
            f"hard links are not supported in this folder ({fs}: {exc.strerror})", root,
            "claims, dumps and reports are published by hard links, which never replace a file: use a local disk, "
            f"NFS, or an SMB share that supports hard links ({_SPEC})") from None
    if not os.path.samestat(os.stat(src), os.stat(dst)):
        raise UnsupportedFolderError(
            f"hard links are emulated by copies in this folder ({fs})", root,
            f"use a local disk, NFS, or an SMB share that supports hard links ({_SPEC})")
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return
        raise UnsupportedFolderError(f"a hard link onto an existing name fails oddly in this folder ({fs}: "
                                     f"{exc.strerror})", root, f"see {_SPEC}") from None
    raise UnsupportedFolderError(f"a hard link replaced an existing file in this folder ({fs})", root,
                                 f"publishing would overwrite dumps: use another filesystem ({_SPEC})")


def _check_renames(probe: str, root: str, fs: str) -> None:
    new, target = os.path.join(probe, "c"), os.path.join(probe, "b")  # b is a second name of a
    folder, moved = os.path.join(probe, "d"), os.path.join(probe, "e")
    try:
        _write(new, b"c")
        os.replace(new, target)
        os.mkdir(folder)
        _write(os.path.join(folder, "f"), b"f")
        os.rename(folder, moved)
    except OSError as exc:
        raise UnsupportedFolderError(
            f"renames fail in this folder ({fs}: {exc.strerror})", root,
            f"JSON documents are replaced and work folders moved aside by renames: use another filesystem ({_SPEC})"
        ) from None
    if (_read(target) != b"c" or _read(os.path.join(probe, "a")) != b"a" or os.path.exists(new)
            or os.path.exists(folder) or _read(os.path.join(moved, "f")) != b"f"):
        raise UnsupportedFolderError(f"renames do not replace or move files as POSIX says in this folder ({fs})",
                                     root, f"use another filesystem ({_SPEC})")


def remove_probe_leftovers(root: str) -> list[str]:
    """Remove the probe folders that probes on this host left when killed (their process is gone).

    Returns:
        The folders removed.
    """
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            if not name.startswith(PROBE_PREFIX):
                continue
            parts = name[len(PROBE_PREFIX):].rsplit(".", 2)  # host names may contain dots
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or pid_alive(int(parts[1])):
                continue
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
    return removed


def filesystem_of(path: str) -> str:
    """The type of the filesystem holding ``path`` from /proc/self/mountinfo, or ``unknown``."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, right.split()[0]
    except OSError:
        pass
    return fstype


def sync_client_of(path: str) -> str | None:
    """The sync client whose marker is in ``path`` or a folder above it, or whose folder name is on the path."""
    current = os.path.realpath(path)
    while True:
        for marker, client in _SYNC_MARKERS:
            if os.path.exists(os.path.join(current, marker)):
                return client
        base = os.path.basename(current)
        for prefix, client in _SYNC_FOLDER_NAMES:
            if base == prefix or base.startswith(prefix + " - "):  # "OneDrive - Company"
                return client
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
