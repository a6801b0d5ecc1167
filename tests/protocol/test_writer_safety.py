"""The writer never overwrites, never leaves a file under the final name unless it completed, and turns every way
a write can fail (exception, unwritable folder, full disk, file size limit, kill -9) into a clean outcome."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import CaptureError, DumpWriter, IncompleteDumpError, RecordKey, open_dump, validate
from tests.protocol.support import golden_manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = RecordKey(0, 0, "layers.0:out")


def _bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _child(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.protocol.writer_child", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_never_overwrites_an_existing_dump_or_partial(tmp_path):
    path = str(tmp_path / "d.h5")
    with open(path, "wb") as fh:
        fh.write(b"a user's file")
    with pytest.raises(CaptureError, match="a dump already exists under this name.*never overwrites"):
        DumpWriter(path, golden_manifest())
    assert _bytes(path) == b"a user's file"
    other = str(tmp_path / "e.h5")
    with open(other + ".partial", "wb") as fh:
        fh.write(b"x")
    with pytest.raises(CaptureError, match="an unfinished dump is in the way"):
        DumpWriter(other, golden_manifest())
    assert _bytes(other + ".partial") == b"x" and not os.path.exists(other)


def test_a_dump_appearing_during_the_write_is_kept_and_ours_stays_partial(tmp_path):
    path = str(tmp_path / "d.h5")
    w = DumpWriter(path, golden_manifest())
    w.add(KEY, np.ones(3, np.float32))
    with open(path, "wb") as fh:
        fh.write(b"someone else's")
    with pytest.raises(CaptureError, match="a dump appeared under this name while writing.*kept as"):
        w.close()
    assert _bytes(path) == b"someone else's"
    with pytest.raises(IncompleteDumpError):
        open_dump(path + ".partial")


def test_exception_inside_with_leaves_nothing(tmp_path):
    path = str(tmp_path / "d.h5")
    with pytest.raises(RuntimeError, match="boom"):
        with DumpWriter(path, golden_manifest()) as w:
            w.add(KEY, np.ones((100, 100), np.float32))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_completed_dump_has_state_complete_and_no_partial(tmp_path):
    path = str(tmp_path / "d.h5")
    with DumpWriter(path, golden_manifest()) as w:
        w.add(KEY, np.ones(3, np.float32))
    assert os.listdir(tmp_path) == ["d.h5"]
    assert validate(path).count == 1


def _unwritable_folder(tmp_path) -> tuple[str, str]:
    """A folder this process cannot create files in, and the expected message fragment."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder), "the output folder is not writable"
    # root ignores permission bits; sysfs refuses new files even to root
    if os.path.isdir("/sys/kernel"):
        return "/sys/kernel", "the output folder is not writable"
    pytest.skip("running as root without /sys: no folder here refuses root's writes")


def test_unwritable_folder_gives_a_clean_error_and_no_file(tmp_path):
    folder, message = _unwritable_folder(tmp_path)
    path = os.path.join(folder, "d.h5")
    with pytest.raises(CaptureError, match=message) as info:
        DumpWriter(path, golden_manifest())
    assert "\n" not in str(info.value)
    assert not os.path.exists(path) and not os.path.exists(path + ".partial")


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: os.path.join(str(tmp), "missing", "d.h5"), "the output folder does not exist"),
    (lambda tmp: os.path.join(str(tmp), "a_file", "d.h5"), "the output folder is not a folder"),
])
def test_missing_folder_or_file_in_place_of_folder(tmp_path, make_path, message):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CaptureError, match=message):
        DumpWriter(make_path(tmp_path), golden_manifest())


@pytest.fixture
def tiny_tmpfs():
    """A real 4 MiB file system (needs mount permission; skipped with the reason when there is none)."""
    folder = tempfile.mkdtemp(prefix="tp-full-")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", folder], capture_output=True, text=True)
    if res.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the RLIMIT_FSIZE test covers write failures")
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)
        os.rmdir(folder)


def test_disk_full_gives_a_clean_error_and_leaves_nothing(tiny_tmpfs):
    path = os.path.join(tiny_tmpfs, "d.h5")
    res = _child("fill", path, "20", "512")  # 10 MiB into 4 MiB
    assert res.returncode == 3, res.stderr
    assert res.stdout.startswith(f"ERROR: {path}: the disk is full"), res.stdout
    assert "Traceback" not in res.stderr and "Segmentation" not in res.stderr
    assert os.listdir(tiny_tmpfs) == []
    # the file system is usable again and a dump that fits is written
    res = _child("fill", path, "2", "256")
    assert res.returncode == 0 and res.stdout.strip() == "DONE", res.stdout + res.stderr
    assert validate(path).count == 2


def test_disk_filling_up_before_close_gives_a_clean_error_and_leaves_nothing(tiny_tmpfs):
    # the index rows still in memory are checked against the free space before HDF5 writes them (a failed HDF5
    # write crashes the process later); with a little space left, the writer stops cleanly
    path = os.path.join(tiny_tmpfs, "d.h5")
    res = _child("full-at-close", path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.startswith(f"ERROR: {path}: the disk is full ("), res.stdout
    assert "MiB needed to go on); the dump was not written" in res.stdout
    assert "Traceback" not in res.stderr and "Segmentation" not in res.stderr
    assert os.listdir(tiny_tmpfs) == []


def test_file_size_limit_gives_a_clean_error_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "d.h5")
    res = _child("fill", path, "20", "512", str(3 << 20))
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.startswith(f"ERROR: {path}: the file grew beyond the allowed file size (EFBIG)"), res.stdout
    assert os.listdir(tmp_path) == []


KILL_POINTS = [("START", 0.0), ("RECORD 5", 0.0), ("RECORD 60", 0.0), ("STREAM 10", 0.0), ("CLOSING", 0.0),
               ("CLOSING", 0.02), ("CLOSING", 0.08)]


@pytest.mark.slow
def test_sigkill_at_any_point_never_leaves_a_file_under_the_final_name(tmp_path):
    outcomes = []
    for i, (marker, delay) in enumerate(KILL_POINTS):
        path = str(tmp_path / f"k{i}.h5")
        proc = subprocess.Popen([sys.executable, "-m", "tests.protocol.writer_child", "big", path], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stdout:
            seen.append(line.strip())
            if line.strip() == marker:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        proc.stdout.close()
        proc.wait(timeout=60)
        done = "DONE" in seen
        assert proc.returncode == -signal.SIGKILL, (marker, proc.returncode, seen[-3:])
        if os.path.exists(path):
            # only possible when the writer had completed its close (rename done before the kill landed)
            assert validate(path).count == 121
            outcomes.append("complete")
        else:
            assert not done
            outcomes.append("absent")
        partial = path + ".partial"
        if os.path.exists(partial):
            with pytest.raises(IncompleteDumpError, match="unfinished dump"):
                open_dump(partial)
            result = CliRunner().invoke(cli, ["validate", partial])
            assert result.exit_code == 3
            assert result.stderr == (f"Error: {partial}: this is an unfinished dump (a leftover .partial file). "
                                     "Its writer was interrupted; capture it again\n")
            # renamed by hand, a killed writer's file is refused in one line (state or structure), never crashes;
            # only a writer killed after marking the file complete (during fsync/rename) left a sound dump
            renamed = str(tmp_path / f"renamed{i}.h5")
            os.link(partial, renamed)
            result = CliRunner().invoke(cli, ["validate", renamed])
            if result.exit_code == 0:
                assert marker == "CLOSING" and "121 records" in result.output
            else:
                assert result.exit_code == 3, result.output
                assert result.stderr.startswith(f"Error: {renamed}: ") and result.stderr.count("\n") == 1
    assert outcomes.count("absent") >= 4, outcomes
