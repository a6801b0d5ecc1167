"""setup.cfg's dependency ranges, the oldest-versions constraints and the lock agree (no network, no installs).

- every direct dependency (install_requires and every extra but ``bench``) has one lower bound, and
  requirements/oldest.txt (``make test-oldest``) pins it to exactly that bound, and pins nothing else: so the lower
  bounds are the tested ones;
- every package that the lock requirements/test.txt (``make test``) pins is inside setup.cfg's range for it, and every
  direct dependency is in the lock;
- the lock pins torch to 2.13.0 (the CPU build on this machine's disk; a local label such as +cpu is allowed).

Each check is a function returning a list of problems; the last tests run them on deliberately broken copies in a
temporary folder, so that they are known to be able to fail.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_CFG = os.path.join(REPO, "setup.cfg")
OLDEST = os.path.join(REPO, "requirements", "oldest.txt")
LOCK = os.path.join(REPO, "requirements", "test.txt")

#: extras that are not part of the tested environments (``make bench`` only)
UNTESTED_EXTRAS = {"bench"}
LOWER_BOUND_OPERATORS = (">=", "~=", "==")


# -- parsing ---------------------------------------------------------------------------------------------------------

def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def direct_requirements(setup_cfg: str) -> list[tuple[str, Requirement]]:
    """(where, requirement) for install_requires and each tested extra, as setup.cfg writes them."""
    parser = configparser.ConfigParser(interpolation=None)
    with open(setup_cfg, encoding="utf-8") as f:
        parser.read_file(f)
    found = [("install_requires", Requirement(line))
             for line in _lines(parser.get("options", "install_requires", fallback=""))]
    if parser.has_section("options.extras_require"):
        for extra, value in parser.items("options.extras_require"):
            if extra not in UNTESTED_EXTRAS:
                found += [(f"extra {extra}", Requirement(line)) for line in _lines(value)]
    return found


def requirements_file(path: str) -> dict[str, Requirement]:
    """The requirements of a pip requirements/constraints file by canonical name (options and comments skipped)."""
    found: dict[str, Requirement] = {}
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = re.sub(r"(^|\s)#.*", "", raw).strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name not in found, f"{path}: {req.name} is listed twice"
            found[name] = req
    return found


def lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in LOWER_BOUND_OPERATORS]
    return bounds[0] if len(bounds) == 1 else None


def exact_pin(req: Requirement) -> Version | None:
    specs = list(req.specifier)
    return Version(specs[0].version) if len(specs) == 1 and specs[0].operator == "==" else None


# -- checks ----------------------------------------------------------------------------------------------------------

def bound_problems(setup_cfg: str) -> list[str]:
    """Direct dependencies without exactly one lower bound, or with different lower bounds in different places."""
    problems, bounds = [], {}
    for where, req in direct_requirements(setup_cfg):
        bound = lower_bound(req)
        if bound is None:
            problems.append(f"{where}: {req} has no single lower bound (>=)")
            continue
        bounds.setdefault(canonicalize_name(req.name), {}).setdefault(bound, []).append(where)
    for name, seen in bounds.items():
        if len(seen) > 1:
            problems.append(f"{name} has different lower bounds: "
                            + ", ".join(f"{v} in {', '.join(w)}" for v, w in sorted(seen.items())))
    return problems


def oldest_problems(setup_cfg: str, oldest: str) -> list[str]:
    """oldest.txt must pin each direct dependency to its lower bound with ==, and nothing else."""
    problems = []
    pins = requirements_file(oldest)
    wanted = {}
    for _, req in direct_requirements(setup_cfg):
        bound = lower_bound(req)
        if bound is not None:
            wanted[canonicalize_name(req.name)] = (req, bound)
    for name, (req, bound) in sorted(wanted.items()):
        if name not in pins:
            problems.append(f"{req.name} (lower bound {bound}) is not pinned in {os.path.basename(oldest)}")
            continue
        pinned = exact_pin(pins[name])
        if pinned is None:
            problems.append(f"{os.path.basename(oldest)}: {pins[name]} is not an exact == pin")
        elif pinned != bound:
            problems.append(f"{os.path.basename(oldest)} pins {pins[name]} but setup.cfg's lower bound is {bound}")
    for name in sorted(set(pins) - set(wanted)):
        problems.append(f"{os.path.basename(oldest)} pins {pins[name]}, which is no direct dependency of setup.cfg")
    return problems


def lock_problems(setup_cfg: str, lock: str) -> list[str]:
    """Each package of the lock inside each setup.cfg range for it; each direct dependency in the lock."""
    problems = []
    pins = requirements_file(lock)
    for where, req in direct_requirements(setup_cfg):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} ({where}) is not in the lock {os.path.basename(lock)}")
            continue
        pinned = exact_pin(pins[name])
        if pinned is None:
            problems.append(f"the lock has {pins[name]}, not an exact == pin")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"the lock pins {req.name}=={pinned}, outside setup.cfg's {req} ({where})")
    return problems


def torch_pin_problems(lock: str) -> list[str]:
    req = requirements_file(lock).get("torch")
    pinned = exact_pin(req) if req is not None else None
    if pinned is None or pinned.public != "2.13.0":
        return [f"the lock must pin torch==2.13.0 (a local label like +cpu allowed), it has {req}"]
    return []


# -- the real files --------------------------------------------------------------------------------------------------

def test_every_direct_dependency_has_one_lower_bound():
    assert direct_requirements(SETUP_CFG), "no dependencies found in setup.cfg"
    assert bound_problems(SETUP_CFG) == []


def test_oldest_constraints_pin_exactly_the_lower_bounds():
    assert oldest_problems(SETUP_CFG, OLDEST) == []


def test_lock_is_inside_setup_cfg_ranges():
    assert lock_problems(SETUP_CFG, LOCK) == []


def test_lock_pins_torch_2_13_0():
    assert torch_pin_problems(LOCK) == []


# -- the checks can fail ---------------------------------------------------------------------------------------------

@pytest.fixture
def copies(tmp_path):
    """Copies of setup.cfg, oldest.txt and the lock, and a function that edits one of them by a regex."""
    paths = {}
    for key, src in (("cfg", SETUP_CFG), ("oldest", OLDEST), ("lock", LOCK)):
        paths[key] = str(tmp_path / os.path.basename(src))
        shutil.copyfile(src, paths[key])

    def edit(key, pattern, replacement):
        with open(paths[key], encoding="utf-8") as f:
            text = f.read()
        new, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
        assert count == 1, f"{pattern!r} not found in {paths[key]}"
        with open(paths[key], "w", encoding="utf-8") as f:
            f.write(new)

    paths["edit"] = edit
    return paths


def test_the_copies_pass_unedited(copies):
    assert bound_problems(copies["cfg"]) == []
    assert oldest_problems(copies["cfg"], copies["oldest"]) == []
    assert lock_problems(copies["cfg"], copies["lock"]) == []
    assert torch_pin_problems(copies["lock"]) == []


def test_a_dependency_without_lower_bound_fails(copies):
    copies["edit"]("cfg", r"^([ \t]+)rich>=[^\s]+$", r"\1rich")
    assert any("rich has no single lower bound" in p for p in bound_problems(copies["cfg"]))


def test_an_extra_with_a_different_bound_than_all_fails(copies):
    copies["edit"]("cfg", r"^([ \t]+)numba>=[^\s]+$", r"\1numba>=0.1")  # the first one: the fast extra
    assert any(p.startswith("numba has different lower bounds") for p in bound_problems(copies["cfg"]))


def test_a_raised_bound_without_the_constraint_fails(copies):
    copies["edit"]("cfg", r"^([ \t]+)click>=[^\s]+$", r"\1click>=99.0")
    assert any("lower bound is 99.0" in p for p in oldest_problems(copies["cfg"], copies["oldest"]))


def test_a_missing_or_loose_or_extra_constraint_fails(copies):
    copies["edit"]("oldest", r"^h5py==.*$", "")
    copies["edit"]("oldest", r"^pytest==(.*)$", r"pytest>=\1")
    with open(copies["oldest"], "a", encoding="utf-8") as f:
        f.write("requests==2.0.0\n")
    problems = oldest_problems(copies["cfg"], copies["oldest"])
    assert any(p.startswith("h5py (lower bound") for p in problems)
    assert any("pytest>=" in p and "not an exact == pin" in p for p in problems)
    assert any("requests==2.0.0, which is no direct dependency" in p for p in problems)


def test_a_bench_only_constraint_is_extra(copies):
    with open(copies["oldest"], "a", encoding="utf-8") as f:
        f.write("polygraphy==0.49.0\n")
    assert any("polygraphy" in p for p in oldest_problems(copies["cfg"], copies["oldest"]))


def test_a_lock_outside_the_range_fails(copies):
    copies["edit"]("lock", r"^numpy==.*$", "numpy==1.26.4")
    assert any("numpy==1.26.4, outside" in p for p in lock_problems(copies["cfg"], copies["lock"]))


def test_a_direct_dependency_missing_from_the_lock_fails(copies):
    copies["edit"]("lock", r"^watchdog==.*$", "")
    assert any(p.startswith("watchdog (install_requires) is not in the lock")
               for p in lock_problems(copies["cfg"], copies["lock"]))


@pytest.mark.parametrize("pin, ok", [("torch==2.13.0+cpu", True), ("torch==2.13.0", True),
                                     ("torch==2.14.1", False), ("torch>=2.13", False)])
def test_the_torch_pin(copies, pin, ok):
    copies["edit"]("lock", r"^torch==.*$", pin)
    assert (torch_pin_problems(copies["lock"]) == []) is ok


def test_the_set_up_targets_have_their_recipes():
    """`make test` installs the Debian packages the tests use and runs pytest; `make demo` runs the demo (an edit
    once cut both recipes out)."""
    import subprocess
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plan = subprocess.run(["make", "-n", "-C", root, "system-packages", "demo", "test"], capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "apt-get install" in plan.stdout
    assert all(f"{cmd}:{pkg}" in plan.stdout for cmd, pkg in (("chromium", "chromium"), ("fusefat", "fusefat"),
                                                                ("mkfs.vfat", "dosfstools"), ("fusermount", "fuse")))
    assert "parity demo --out demo-out" in plan.stdout and "-m pytest -q" in plan.stdout
