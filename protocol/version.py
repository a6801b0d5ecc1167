"""Format identity and version rules (SPEC.md section 2)."""
from __future__ import annotations

from .errors import UnsupportedVersionError

DUMP_FORMAT = "tensorparity.dump"
INPUTS_FORMAT = "tensorparity.inputs"
FORMAT_VERSION = "1.2"  # 1.1: CRC-32C checksums (SPEC.md section 8.1); 1.2: call structures (section 10.1)
MAJOR, MINOR = (int(p) for p in FORMAT_VERSION.split("."))


def parse_version(text: str) -> tuple[int, int]:
    """Parse ``"MAJOR.MINOR"`` into two ints; raise ValueError when malformed."""
    major, _, minor = str(text).partition(".")
    if not major.isdigit() or not minor.isdigit():
        raise ValueError(f"malformed format_version {text!r}")
    return int(major), int(minor)


def check_version(text: str, path: str, kind: str) -> tuple[int, int]:
    """Accept any MINOR of our MAJOR; refuse another MAJOR naming both versions.

    Raises:
        UnsupportedVersionError: the file's MAJOR differs from this reader's, or the version is malformed.
    """
    try:
        major, minor = parse_version(text)
    except ValueError:
        raise UnsupportedVersionError(
            f"malformed format_version {text!r} in this {kind}", path,
            f"this reader understands {kind} format {MAJOR}.x") from None
    if major != MAJOR:
        newer = major > MAJOR
        raise UnsupportedVersionError(
            f"{kind} format version {text} is not supported by this reader (format {FORMAT_VERSION})",
            path,
            "upgrade tensorparity to read it" if newer else
            f"re-capture it, or read it with a tensorparity release of format {major}.x")
    return major, minor
