"""The shared-folder probe (protocol/fsprobe.py): real filesystems that pass it, and real ones that are refused."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from protocol import UnsupportedFolderError
from protocol.fsprobe import FolderReport, filesystem_of, probe_folder, remove_probe_leftovers, sync_client_of


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_a_local_folder_passes_and_the_probe_leaves_nothing_behind(tmp_path):
    (tmp_path / "user-file.txt").write_text("mine")
    report = probe_folder(tmp_path)
    assert report.filesystem == filesystem_of(str(tmp_path)) != "unknown"
    assert report.sync_client is None and report.warning() is None
    assert os.listdir(tmp_path) == ["user-file.txt"]


def test_probe_leftovers_of_dead_probes_on_this_host_are_removed_and_nothing_else(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".parity-probe.{host}.{_dead_pid()}.0badc0de"
    alive = tmp_path / f".parity-probe.{host}.{os.getpid()}.0000beef"
    elsewhere = tmp_path / f".parity-probe.other-host.example.{_dead_pid()}.12345678"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "a").write_bytes(b"a")
    (tmp_path / ".parity-probe-ish").mkdir()  # not a probe's name
    assert remove_probe_leftovers(str(tmp_path)) == [dead.name]
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, elsewhere.name, ".parity-probe-ish"])


@pytest.mark.parametrize("marker, client", [(".stfolder", "Syncthing"), (".dropbox", "Dropbox"),
                                            (".sync/ID", "Resilio Sync"), ("OneDrive - Example", "OneDrive")],
                         ids=["syncthing", "dropbox", "resilio", "onedrive"])
def test_synced_folders_are_recognised_and_warned_about(tmp_path, marker, client):
    synced = tmp_path / "synced"
    if "/" in marker or marker.startswith("."):
        (synced / marker).parent.mkdir(parents=True, exist_ok=True)
        (synced / marker).write_text("")
        root = synced / "parity"
    else:
        root = synced / marker / "parity"
    root.mkdir(parents=True)
    assert sync_client_of(str(root)) == client
    report = probe_folder(root)  # works on this host: the probe cannot see other hosts
    assert report.sync_client == client
    assert report.warning() == (
        f"this shared folder looks synced by {client}: exclusive creation and hard links hold on each host only, "
        "not across hosts; run one agent per label and one watcher (SPEC.md section 13.4)")


def test_a_filesystem_without_hard_links_is_refused(fat_folder):
    assert filesystem_of(fat_folder) == "fuse.fusefat"
    with pytest.raises(UnsupportedFolderError) as err:
        probe_folder(fat_folder)
    assert str(err.value) == (
        f"{fat_folder}: hard links are not supported in this folder (fuse.fusefat: Operation not permitted). "
        "Claims, dumps and reports are published by hard links, which never replace a file: use a local disk, NFS, "
        "or an SMB share that supports hard links (SPEC.md section 13.4)")
    assert err.value.exit_code == 3
    assert os.listdir(fat_folder) == []  # the probe cleaned up after itself


def test_a_read_only_folder_is_refused(readonly_folder):
    with pytest.raises(UnsupportedFolderError) as err:
        probe_folder(readonly_folder)
    assert str(err.value) == (
        f"{readonly_folder}: cannot create files in this folder (tmpfs: Read-only file system). The agents and the "
        "watcher write claims, dumps and reports here: mount it read-write and writable for this user")


def test_folder_report_without_a_sync_client_has_no_warning():
    assert FolderReport("nfs4", None).warning() is None
