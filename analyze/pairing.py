"""Pairing a reference dump with a candidate dump (docs/ARCHITECTURE.md sections 6 and 7).

Records pair by key, never by position; the unmatched keys of each side are listed. Dumps of different input sets
are refused; different models only warn (comparing models is a use case: int4 vs fp32). Multi-rank captures pair
rank with rank; the two sides must have the same world size.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from protocol import DumpReader, InputSet, RecordInfo, open_dump, read_input_set
from protocol.errors import InputSetMismatchError, PairingError, ParityError

def resolve_dump_paths(spec) -> list[str]:
    """The dump files a user named: one file, several files (one per rank), a folder, or a glob pattern.

    Args:
        spec: a path, a glob, a folder (every ``*.h5`` directly inside, partial files ignored), or a list of those.

    Returns:
        The files, sorted by name.

    Raises:
        ParityError: nothing matches.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    paths: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(item), "*.h5")))
            if not found:
                raise ParityError("folder holds no dump (*.h5)", item, "pass the dump files or another folder")
            paths.extend(found)
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            found = sorted(glob.glob(item))
            if not found:
                raise ParityError("pattern matches no file", item, "check the pattern")
            paths.extend(found)
        else:
            paths.append(item)
    return sorted(dict.fromkeys(paths))


@dataclass
class DumpSide:
    """One side of a comparison: its dumps ordered by rank (one entry for a single-rank capture)."""

    readers: list[DumpReader]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.readers]

    @property
    def world_size(self) -> int:
        return len(self.readers)

    @property
    def manifest(self):
        return self.readers[0].manifest

    def describe(self) -> str:
        """Files of this side, for messages."""
        return self.paths[0] if len(self.readers) == 1 else f"{self.paths[0]} (+{len(self.readers) - 1} ranks)"

    def close(self) -> None:
        for r in self.readers:
            r.close()


def open_side(spec) -> DumpSide:
    """Open the dumps of one side and order them by the rank in their manifests.

    Raises:
        PairingError: the ranks are not 0..W-1 of one world size W, or two files claim one rank.
        ParityError subclasses from protocol for unreadable files.
    """
    paths = resolve_dump_paths(spec)
    readers: list[DumpReader] = []
    try:
        for p in paths:
            readers.append(open_dump(p))
    except BaseException:
        for r in readers:
            r.close()
        raise
    side = DumpSide(sorted(readers, key=lambda r: r.manifest.rank))
    sizes = {r.manifest.world_size for r in side.readers}
    ranks = [r.manifest.rank for r in side.readers]
    problem = None
    if len(sizes) != 1:
        problem = f"the dumps disagree on the world size ({sorted(sizes)})"
    elif ranks != list(range(sizes.pop())):
        problem = (f"the dumps hold ranks {ranks} but their manifests declare world size "
                   f"{side.readers[0].manifest.world_size}")
    if problem:
        side.close()
        raise PairingError(problem, paths[0], "pass one dump per rank, every rank of one capture")
    return side


def check_pairable(ref: DumpSide, cand: DumpSide) -> list[str]:
    """Refuse pairs that cannot be compared; return warnings for pairs that can but may surprise.

    Raises:
        PairingError: different world sizes.
        InputSetMismatchError: different input sets (names both sha256s and both files).
    """
    if ref.world_size != cand.world_size:
        raise PairingError(f"the reference has {ref.world_size} rank(s) but the candidate has {cand.world_size}",
                           cand.describe(), "sharded captures pair rank with rank: capture both sides with the "
                                            "same world size")
    warnings = []
    for r, c in zip(ref.readers, cand.readers):
        rs, cs = r.manifest.inputs_sha256, c.manifest.inputs_sha256
        if rs != cs:
            raise InputSetMismatchError(
                f"the dumps consumed different input sets: reference {r.path} used {rs or '(none recorded)'}, "
                f"candidate {c.path} used {cs or '(none recorded)'}", None,
                "capture both sides from the same input set")
    rm, cm = ref.manifest.model, cand.manifest.model
    r_id = rm.get("hash") or rm.get("path") or rm.get("id")
    c_id = cm.get("hash") or cm.get("path") or cm.get("id")
    if r_id and c_id and r_id != c_id:
        warnings.append(f"the dumps come from different models (reference {_model_name(rm)}, candidate "
                        f"{_model_name(cm)}); comparing anyway")
    return warnings


def _model_name(model: dict) -> str:
    name = model.get("path") or model.get("id") or "?"
    h = model.get("hash")
    return f"{name} [{h[:12]}]" if h else name


@dataclass
class RecordPairing:
    """Records of one rank pair: the pairs in the reference's execution order, and the unmatched keys."""

    rank: int
    pairs: list[tuple[RecordInfo, RecordInfo]] = field(default_factory=list)
    only_reference: list[RecordInfo] = field(default_factory=list)
    only_candidate: list[RecordInfo] = field(default_factory=list)


def pair_records(ref: DumpReader, cand: DumpReader, *, sites: str | None = None, rank: int = 0) -> RecordPairing:
    """Pair the records of two dumps by key (in the reference's execution order).

    Args:
        ref, cand: open dumps.
        sites: a regex searched in each site; records of other sites are left out on both sides.
        rank: the rank these dumps hold (recorded in the result).
    """
    pattern = re.compile(sites) if sites else None
    keep = (lambda r: True) if pattern is None else (lambda r: bool(pattern.search(r.key.site)))
    result = RecordPairing(rank)
    ref_keys = set()
    for info in ref.records():
        if not keep(info):
            continue
        ref_keys.add(info.key)
        if info.key in cand:
            result.pairs.append((info, cand.record(info.key)))
        else:
            result.only_reference.append(info)
    result.only_candidate = [c for c in cand.records() if keep(c) and c.key not in ref_keys]
    return result


def find_input_set(sides: list[DumpSide], inputs=None) -> InputSet | None:
    """The input set the dumps consumed: the file the user gave, or one found next to the dumps.

    Looks for ``<sha256>.h5`` or ``inputs.h5`` in the dump's folder, its ``inputs/`` sub-folder, and the shared-folder
    layout's ``ROOT/inputs/<sha256>.h5`` (dumps sit in ``ROOT/dumps/<run_id>/``).

    Returns:
        The input set, or None when none was given or found (metrics that need labels are then skipped).

    Raises:
        InputSetMismatchError: the given input set is not the one the dumps recorded.
    """
    sha = sides[0].readers[0].manifest.inputs_sha256
    if inputs is not None:
        found = read_input_set(inputs)
        if sha and found.sha256 != sha:
            raise InputSetMismatchError(
                f"this input set has sha256 {found.sha256} but the dump {sides[0].paths[0]} consumed {sha}",
                inputs, "pass the input set the dumps were captured from")
        return found
    if not sha:
        return None
    folder = os.path.dirname(os.path.abspath(sides[0].paths[0]))
    candidates = [os.path.join(folder, f"{sha}.h5"), os.path.join(folder, "inputs", f"{sha}.h5"),
                  os.path.join(folder, "inputs.h5"),
                  os.path.join(folder, os.pardir, "inputs", f"{sha}.h5"),
                  os.path.join(folder, os.pardir, os.pardir, "inputs", f"{sha}.h5")]
    for path in candidates:
        if os.path.isfile(path):
            try:
                found = read_input_set(path)
            except ParityError:
                continue
            if found.sha256 == sha:
                return found
    return None

