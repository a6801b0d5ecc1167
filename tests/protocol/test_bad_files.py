"""Hostile files: ``parity validate`` (and ``inspect``) exits 3 with the exact one-line message for each, through
click's runner and the installed entry point; the committed files are still what make_bad.py writes."""
from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner

from workflows.cli.main import cli
from protocol import ParityError, open_dump, validate
from tests.protocol.support import REPO, load_script

BAD = os.path.join(REPO, "tests", "data", "bad")
mb = load_script("tests", "data", "bad", "make_bad.py")
NAMES = sorted(mb.EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_validate_exits_3_with_the_exact_message(name):
    path = os.path.join(BAD, name)
    result = CliRunner().invoke(cli, ["validate", path])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == "Error: " + mb.EXPECTED[name].format(path=path) + "\n"
    with pytest.raises(ParityError) as info:
        validate(path)
    assert str(info.value) == mb.EXPECTED[name].format(path=path)


@pytest.mark.parametrize("name", mb.FOUND_ON_OPEN)
def test_inspect_refuses_with_the_same_message(name):
    path = os.path.join(BAD, name)
    for args in (["inspect", path], ["inspect", "--json", path]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, result.output
        assert result.stderr == "Error: " + mb.EXPECTED[name].format(path=path) + "\n"


def test_reader_refuses_damage_in_data_when_asked_for_it():
    with open_dump(os.path.join(BAD, "missing_data.h5")) as r:
        assert len(r) == 3  # the index alone is fine: listing works without touching data
        with pytest.raises(ParityError, match="data of record s0/t0/layers.1:out#0 is missing"):
            r.read("s0/t0/layers.1:out#0")
    with open_dump(os.path.join(BAD, "absurd_shape.h5")) as r:
        with pytest.raises(ParityError, match="but the index says"):
            list(r.iter_blocks("s0/t0/layers.0:out#0"))


def test_installed_entry_point_on_all_hostile_files_at_once(parity_exe):
    paths = [os.path.join(BAD, n) for n in NAMES]
    res = subprocess.run([parity_exe, "validate", *paths], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3
    assert res.stdout == ""
    assert res.stderr.splitlines() == ["Error: " + mb.EXPECTED[n].format(path=p) for n, p in zip(NAMES, paths)]
    assert "Traceback" not in res.stderr


def test_entry_point_mixes_good_and_bad_files(parity_exe):
    good = os.path.join(REPO, "tests", "data", "golden", "dump-v1.0.h5")
    bad = os.path.join(BAD, "major2.h5")
    res = subprocess.run([parity_exe, "validate", good, bad], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3
    assert res.stdout == f"OK  {good}: dump v1.0, 24 records, inputs sha256 " + res.stdout.split("sha256 ")[1]
    assert res.stderr == "Error: " + mb.EXPECTED["major2.h5"].format(path=bad) + "\n"


def test_the_script_still_makes_the_committed_files(tmp_path):
    out = str(tmp_path / "bad")
    assert mb.make(out) == NAMES
    assert sorted(n for n in os.listdir(BAD) if n != "make_bad.py" and not n.startswith("__")) == NAMES
    assert sorted(os.listdir(out)) == NAMES
    for name in NAMES:
        path = os.path.join(out, name)
        with pytest.raises(ParityError) as info:
            validate(path)
        assert str(info.value) == mb.EXPECTED[name].format(path=path), name
