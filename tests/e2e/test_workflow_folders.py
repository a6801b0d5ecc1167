"""The daemons refuse a shared folder whose filesystem lacks what the protocol needs, before writing anything (real
filesystems: a FAT image without hard links, a read-only tmpfs; see tests/fixtures_mounts.py)."""
from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import ENV

HARD_LINKS = ("hard links are not supported in this folder (fuse.fusefat: Operation not permitted). Claims, dumps "
              "and reports are published by hard links, which never replace a file: use a local disk, NFS, or an SMB "
              "share that supports hard links (SPEC.md section 13.4)")
READ_ONLY = ("cannot create files in this folder (tmpfs: Read-only file system). The agents and the watcher write "
             "claims, dumps and reports here: mount it read-write and writable for this user")
DAEMONS = [("agent", "--label", "cpu", "--once"), ("watch", "--once")]


def _refused(parity_exe: str, args: tuple, root: str) -> str:
    out = subprocess.run([parity_exe, *args[:1], root, *args[1:]], capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr  # one line, no traceback
    return out.stderr.rstrip("\n")


@pytest.mark.parametrize("args", DAEMONS, ids=["agent", "watch"])
def test_a_folder_without_hard_links_is_refused_at_start(parity_exe, fat_folder, args):
    assert _refused(parity_exe, args, fat_folder) == f"Error: {fat_folder}: {HARD_LINKS}"
    assert os.listdir(fat_folder) == []  # refused before anything was written; the probe cleaned up


@pytest.mark.parametrize("args", DAEMONS, ids=["agent", "watch"])
def test_a_read_only_folder_is_refused_at_start(parity_exe, readonly_folder, args):
    assert _refused(parity_exe, args, readonly_folder) == f"Error: {readonly_folder}: {READ_ONLY}"


def test_a_synced_folder_is_served_with_a_warning(parity_exe, tmp_path):
    (tmp_path / ".stfolder").mkdir()  # Syncthing's marker at the root of what it syncs
    root = tmp_path / "parity"
    root.mkdir()
    out = subprocess.run([parity_exe, "watch", str(root), "--once"], capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert out.returncode == 0, out.stderr
    assert ("WARNING this shared folder looks synced by Syncthing: exclusive creation and hard links hold on each "
            "host only, not across hosts; run one agent per label and one watcher (SPEC.md section 13.4)"
            in out.stderr), out.stderr
