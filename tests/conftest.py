"""Shared fixtures for every test package."""
from __future__ import annotations

import os
import sys

import pytest

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_mounts"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


@pytest.fixture
def parity_exe() -> str:
    """Path of the installed ``parity`` console script (the real entry point)."""
    exe = os.path.join(os.path.dirname(sys.executable), "parity")
    assert os.path.exists(exe), f"parity entry point not installed next to {sys.executable}"
    return exe
