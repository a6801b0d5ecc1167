"""The documentation the code cites is in the tree: every ``docs/<name>.md`` cited in a ``*.py``, ``*.md`` or Makefile
of the repository names a file under docs/, every section number cited with it is a heading of that file, and no
file cites one of the project's documents without its ``docs/`` prefix (a bare name points outside the repository)."""
from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
#: the project's documents that once lived outside the repository, so that a bare name is a stale reference
STEMS = ("METRICS", "ARCHITECTURE", "ENVIRONMENT", "PERFORMANCE")
#: files that still cite a bare name, to be fixed (they were being rewritten when docs/ was made): path ->
#: how many bare references it may hold. Remove an entry once its file says docs/<name>.md.
ALLOWED_BARE: dict = {}

_NUM = r"\d+(?:\.\d+)*"
_NUMS = rf"{_NUM}(?:\s*(?:-|–|,|and|or)\s*{_NUM})*"
#: a citation: ``docs/<name>.md``, optionally followed by ``section N`` / ``sections N-M`` / ``sections N and M``
_CITE = re.compile(rf"(?<![\w/.])docs/([\w-]+)\.md(?:\s+(?:sections?|§)\s*({_NUMS}))?")
#: inside a docs/ page, ``section N`` with no document before it refers to the page itself
_SELF = re.compile(rf"(\S+\.md\)?[\s(]+)?\bsections?\s+({_NUMS})")
_BARE = re.compile(r"(?<![\w-])(" + "|".join(STEMS) + r")\.md\b")
_HEADING = re.compile(rf"^#{{1,6}}\s+({_NUM})\.?\s", re.MULTILINE)


def _repo_files() -> list[str]:
    """Relative paths of every *.py, *.md and Makefile of the checkout, without hidden folders (.git, .venv*...),
    caches, build metadata, or anything that resolves outside the checkout (the shared design folder)."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not d.endswith(".egg-info") and not d.startswith("demo-out"))
        for name in sorted(files):
            if not (name.endswith((".py", ".md")) or name == "Makefile"):
                continue
            path = os.path.join(folder, name)
            if not os.path.realpath(path).startswith(os.path.realpath(ROOT) + os.sep):
                continue
            out.append(os.path.relpath(path, ROOT).replace(os.sep, "/"))
    return out


FILES = _repo_files()


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _numbers(text: str) -> list[str]:
    """The section numbers a citation names; an integer range such as ``2-4`` names 2, 3 and 4."""
    out = []
    for m in re.finditer(rf"({_NUM})(?:\s*(?:-|–)\s*({_NUM}))?", text):
        lo, hi = m.group(1), m.group(2)
        out.append(lo)
        if hi is not None:
            if lo.isdigit() and hi.isdigit():
                out.extend(str(i) for i in range(int(lo) + 1, int(hi) + 1))
            else:
                out.append(hi)
    return out


def _headings(name: str) -> set[str]:
    path = os.path.join(DOCS, f"{name}.md")
    return set(_HEADING.findall(_read(os.path.relpath(path, ROOT)))) if os.path.isfile(path) else set()


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _citations() -> list[tuple[str, int, str, list[str]]]:
    """``(file, line, document name, cited section numbers)`` for every citation in the checkout."""
    cites = []
    for rel in FILES:
        text = _read(rel)
        for m in _CITE.finditer(text):
            cites.append((rel, _line(text, m.start()), m.group(1), _numbers(m.group(2)) if m.group(2) else []))
        if rel.startswith("docs/"):
            own = os.path.splitext(os.path.basename(rel))[0]
            for m in _SELF.finditer(text):
                if m.group(1) is None:  # "section N" of this very page
                    cites.append((rel, _line(text, m.start()), own, _numbers(m.group(2))))
    return cites


CITATIONS = _citations()


def test_the_documents_exist():
    for name in STEMS:
        assert os.path.isfile(os.path.join(DOCS, f"{name}.md")), f"docs/{name}.md is missing"


def test_citations_were_found():
    # the scan itself works: the metric modules cite docs/METRICS.md by section
    assert any(f == "analyze/tensor_metrics.py" and name == "METRICS" and "1" in nums
               for f, _, name, nums in CITATIONS)


@pytest.mark.parametrize("name", sorted({c[2] for c in CITATIONS}))
def test_every_cited_document_and_section_exists(name):
    missing_file = [f"{f}:{line}" for f, line, n, _ in CITATIONS if n == name
                    and not os.path.isfile(os.path.join(DOCS, f"{name}.md"))]
    assert not missing_file, f"docs/{name}.md is cited but does not exist: {', '.join(missing_file)}"
    headings = _headings(name)
    missing = [f"{f}:{line} section {num}" for f, line, n, nums in CITATIONS if n == name for num in nums
               if num not in headings]
    assert not missing, (f"cited sections that docs/{name}.md has no heading for (headings: "
                         f"{', '.join(sorted(headings))}): {'; '.join(missing)}")


def test_no_bare_references_outside_docs():
    found: dict[str, list[int]] = {}
    for rel in FILES:
        text = _read(rel)
        for m in _BARE.finditer(text):
            before = text[max(0, m.start() - 5):m.start()]
            if before == "docs/":
                continue
            if rel.startswith("docs/") and before.endswith("]("):  # a relative link from one page to another
                continue
            found.setdefault(rel, []).append(_line(text, m.start()))
    unexpected = {f: lines for f, lines in found.items() if len(lines) > ALLOWED_BARE.get(f, 0)}
    assert not unexpected, ("cite the documents as docs/<name>.md (they live in docs/ of this repository): "
                            + "; ".join(f"{f}: line(s) {', '.join(map(str, lines))}"
                                        for f, lines in sorted(unexpected.items())))


def test_allow_list_is_not_stale():
    # an entry whose file no longer cites a bare name must be removed, so that the allow-list only shrinks
    stale = []
    for rel, allowed in ALLOWED_BARE.items():
        path = os.path.join(ROOT, rel)
        text = _read(rel) if os.path.isfile(path) else ""
        count = sum(1 for m in _BARE.finditer(text) if text[max(0, m.start() - 5):m.start()] != "docs/")
        if count < allowed:
            stale.append(f"{rel} ({count} bare reference(s), {allowed} allowed)")
    assert not stale, "lower or remove these ALLOWED_BARE entries: " + ", ".join(stale)
