"""The locks and pyproject.toml agree, and this environment was installed from them.

scripts/lock.sh (`make lock`) resolves pyproject.toml's dependencies into requirements.lock (the
service) and requirements-test.lock (with the test tools); scripts/setup.sh installs one of them.
Someone who edits pyproject.toml without running `make lock` would give a fresh machine versions that
no test ran against; these tests fail first.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from dataclasses import dataclass

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from .conftest import ROOT

# Left out of the locks on purpose: setup.sh installs torch (CPU or CUDA build) itself.
UNLOCKED = {canonicalize_name("torch")}


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: int


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    """The pins of a lock that apply to this machine (their markers evaluated here)."""
    pins: dict[NormalizedName, Pin] = {}
    entry: list[str] = []
    lines = (ROOT / name).read_text().splitlines()
    for line in [*lines, ""]:
        stripped = line.strip()
        if entry and not line.startswith((" ", "\t")):
            text = " ".join(entry).replace("\\", " ")
            requirement = Requirement(text.split(" --hash")[0].strip())
            if requirement.marker is None or requirement.marker.evaluate():
                (spec,) = requirement.specifier
                assert spec.operator == "==", f"{name}: {requirement.name} is not pinned exactly"
                key = canonicalize_name(requirement.name)
                assert key not in pins, f"{name}: {requirement.name} pinned twice for this machine"
                pins[key] = Pin(Version(spec.version), text.count("--hash=sha256:"))
            entry = []
        if stripped and not stripped.startswith("#") and not line.startswith((" ", "\t")):
            entry = [stripped]
        elif entry and stripped.startswith("--hash"):
            entry.append(stripped)
    return pins


def pyproject() -> dict[str, list[Requirement]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        data = tomllib.load(f)
    return {
        "dependencies": [Requirement(r) for r in data["project"]["dependencies"]],
        "test": [Requirement(r) for r in data["project"]["optional-dependencies"]["test"]],
        "build": [Requirement(r) for r in data["build-system"]["requires"]],
    }


LOCKS = {
    "requirements.lock": ("dependencies", "build"),
    "requirements-test.lock": ("dependencies", "test", "build"),
}


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_pins_every_requirement_of_pyproject_within_its_range(lock: str) -> None:
    pins = read_lock(lock)
    wanted = [r for group in LOCKS[lock] for r in pyproject()[group]]
    for requirement in wanted:
        key = canonicalize_name(requirement.name)
        if key in UNLOCKED or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        assert key in pins, f"{requirement} is in pyproject.toml but not in {lock}: run make lock"
        assert requirement.specifier.contains(pins[key].version, prereleases=True), (
            f"{lock} pins {requirement.name}=={pins[key].version}, outside pyproject.toml's "
            f"{requirement}: run make lock"
        )
        assert pins[key].hashes > 0, f"{lock}: {requirement.name} has no hash"


def requires(name: str, extras: set[str]) -> list[Requirement]:
    """What the installed distribution `name` needs on this machine, with the given extras."""
    found = []
    for text in importlib.metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras | {""}):
            found.append(requirement)
    return found


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_is_complete_every_package_needs_only_what_it_pins(lock: str) -> None:
    """The closure: from pyproject's requirements (and torch's own), every requirement of every
    package reached is pinned in the lock at a version it accepts. A package added to pyproject.toml
    with dependencies the lock has never seen fails here."""
    pins = read_lock(lock)
    todo = [r for group in LOCKS[lock] for r in pyproject()[group]]
    todo += requires("torch", set())  # what every build of torch needs is locked; torch itself is not
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = canonicalize_name(requirement.name)
        if key in UNLOCKED or (key, frozenset(requirement.extras)) in seen:
            continue
        seen.add((key, frozenset(requirement.extras)))
        assert key in pins, f"{lock} lacks {requirement.name}, which is needed ({requirement})"
        assert requirement.specifier.contains(pins[key].version, prereleases=True), (
            f"{lock} pins {requirement.name}=={pins[key].version}, but {requirement} is needed"
        )
        todo += requires(requirement.name, set(requirement.extras))
    reached = {key for key, _ in seen}
    assert set(pins) - reached == set(), f"{lock} pins packages nothing needs: run make lock"


def test_the_two_locks_agree() -> None:
    service, test = read_lock("requirements.lock"), read_lock("requirements-test.lock")
    assert {k: test.get(k) for k in service} == service
    assert set(test) > set(service)


def test_this_environment_was_installed_from_the_test_lock() -> None:
    """What setup.sh installed is exactly what the lock says: every pin, at its version, and
    nothing else but torch (with its own CUDA packages on a GPU machine), pip and this project."""
    pins = read_lock("requirements-test.lock")
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()
    }
    assert {k: installed.get(k) for k in pins} == {k: pin.version for k, pin in pins.items()}
    torch_needs = {canonicalize_name(r.name) for r in requires("torch", set())}
    cuda = {k for k in set(installed) - set(pins) if k in torch_needs or k.startswith(("nvidia-", "cuda-"))}
    extra = set(installed) - set(pins) - cuda - {"torch", "triton", "pip", "zimage-sse"}
    assert extra == set(), f"installed but not in the lock: {sorted(extra)}"
