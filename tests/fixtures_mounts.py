"""Folders on real filesystems that lack what the shared-folder protocol needs (for the refusal tests).

- ``fat_folder``: a FAT filesystem (no hard links), an image made by mkfs.vfat and mounted with fusefat (FUSE, so no
  kernel module is needed). Skipped where fusefat, mkfs.vfat or /dev/fuse is missing
  (Debian: ``apt-get install fusefat dosfstools``).
- ``readonly_folder``: a tmpfs mounted read-only. Skipped where this process may not mount (not root, or a
  sandbox without CAP_SYS_ADMIN). A read-only mount, not chmod: root ignores file modes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


def _wait_mounted(path: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def fat_folder(tmp_path) -> str:
    """An empty folder at the root of a mounted FAT filesystem."""
    missing = [tool for tool in ("fusefat", "mkfs.vfat", "fusermount") if shutil.which(tool) is None]
    if missing or not os.path.exists("/dev/fuse"):
        pytest.skip(f"no FAT filesystem here ({', '.join(missing) or '/dev/fuse'} missing; Debian: apt-get install "
                    "fusefat dosfstools)")
    image, mount = tmp_path / "fat.img", tmp_path / "fat"
    with open(image, "wb") as fh:
        fh.truncate(16 << 20)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True, timeout=60)
    mount.mkdir()
    made = subprocess.run(["fusefat", "-o", "rw+", str(image), str(mount)], capture_output=True, text=True,
                          timeout=60)
    if made.returncode != 0 or not _wait_mounted(str(mount)):
        pytest.skip(f"fusefat could not mount a FAT image here: {made.stderr.strip() or made.stdout.strip()}")
    try:
        yield str(mount)
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], capture_output=True, timeout=60)


@pytest.fixture
def readonly_folder(tmp_path) -> str:
    """A folder on a read-only tmpfs that already holds a shared folder's layout (so that nothing but the probe
    would have to write)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "parity-ro", str(mount)], capture_output=True,
                          text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        for sub in ("inputs", "jobs", "claims", "dumps", "reports"):
            (mount / sub).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True, timeout=60)
        yield str(mount)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=60)
