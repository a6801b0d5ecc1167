"""tensorparity's pytest plugin (entry point ``pytest11``: ``parity``), being written."""
from __future__ import annotations


def pytest_addoption(parser):
    """Declare the plugin's options (all prefixed ``--parity-`` / ``parity_``)."""
    group = parser.getgroup("parity", "tensorparity decoder parity tests")
    group.addoption("--parity-capture-expectation", action="store_true", default=False,
                    help="Capture the model output signatures of parity_expectation tests instead of checking them.")
