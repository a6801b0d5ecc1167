"""User-facing errors shared by every package.

A ``ParityError`` is a problem with the user's input (a bad file, a wrong version, an option that cannot be
honoured). The CLI prints it as one line and exits 3. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os


class ParityError(Exception):
    """Base of all user-facing errors: says what is wrong, with which file, and what to do.

    Args:
        what: what is wrong, as one sentence without a trailing period.
        path: the file or folder concerned, if any.
        hint: what the user can do about it, if anything useful can be said.
    """

    exit_code = 3

    def __init__(self, what: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.what = what
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The one-line message shown to the user."""
        text = f"{self.path}: {self.what}" if self.path else self.what
        if self.hint:
            text += f". {self.hint[:1].upper()}{self.hint[1:]}"
        return text

    def __str__(self) -> str:
        return self.message


class UnsupportedVersionError(ParityError):
    """A file of a protocol MAJOR version this reader does not understand."""


class NotAParityFileError(ParityError):
    """A readable file that is not a tensorparity dump or input set (or not the kind expected)."""


class CorruptDumpError(ParityError):
    """A dump or input set that is truncated, inconsistent or otherwise unreadable."""


class IncompleteDumpError(CorruptDumpError):
    """A dump whose writer did not finish (a leftover ``*.partial`` or a ``state`` other than complete)."""


class InputSetMismatchError(ParityError):
    """Two dumps that consumed different input sets, or a dump that does not match a given input set."""


class PairingError(ParityError):
    """Two dumps that cannot be paired (different world sizes, nothing in common, ...)."""


class CaptureError(ParityError):
    """A capture that cannot run: a missing model, an unavailable device or provider, a failed write."""


class JobError(ParityError):
    """A job or claim document in a shared folder that is invalid or unsafe to execute."""


class UnsupportedFolderError(ParityError):
    """A shared folder whose filesystem lacks an operation the shared-folder protocol relies on (exclusive
    creation, hard links, atomic rename; SPEC.md section 13.4)."""
