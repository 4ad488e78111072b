"""The install locks in ``requirements/``: complete, hashed, consistent with pyproject, and installable together.

A fresh machine installs exactly these files (``scripts/setup.sh``), so a dependency that pyproject
asks for but no lock carries would simply be missing there, and a lock that drifted from pyproject
would install what pyproject no longer allows.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"


def _merge_locks() -> object:
    spec = importlib.util.spec_from_file_location("merge_locks", ROOT / "scripts" / "merge_locks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["merge_locks"] = module
    spec.loader.exec_module(module)
    return module


merge_locks = _merge_locks()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = sorted(PROJECT["optional-dependencies"])


def pins(*names: str) -> dict[str, Version]:
    out: dict[str, Version] = {}
    for name in names:
        for package, block in merge_locks.blocks((REQ / f"{name}.txt").read_text()):  # type: ignore[attr-defined]
            out[package] = Version(block.split("==", 1)[1].split()[0])
    return out


def test_there_is_a_lock_for_the_core_and_each_extra() -> None:
    assert sorted(p.stem for p in REQ.glob("*.txt")) == sorted(["core", *EXTRAS])


@pytest.mark.parametrize("extra", [None, *EXTRAS])
def test_every_requirement_is_locked_at_an_allowed_version(extra: str | None) -> None:
    requirements = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    locked = pins("core") if extra is None else pins("core", extra)
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not locked for {extra or 'the core'}"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} is locked but pyproject asks for {requirement.specifier}"
        )


def test_every_locked_package_has_a_hash() -> None:
    for path in REQ.glob("*.txt"):
        for name, block in merge_locks.blocks(path.read_text()):  # type: ignore[attr-defined]
            assert "--hash=sha256:" in block, f"{name} in {path.name} has no hash"


def test_torch_is_the_cpu_build_and_resemblyzer_has_no_old_webrtcvad() -> None:
    speaker = pins("speaker")
    assert str(speaker["torch"]).endswith("+cpu")
    assert "resemblyzer" in speaker
    everything = pins("core", *EXTRAS)
    assert "webrtcvad" not in everything and "typing" not in everything
    assert "webrtcvad-wheels" in everything


def test_all_locks_merge_without_conflict() -> None:
    merged = merge_locks.merge([REQ / f"{name}.txt" for name in ("core", *EXTRAS)])  # type: ignore[attr-defined]
    names = [name for name, _ in merge_locks.blocks(merged)]  # type: ignore[attr-defined]
    assert len(names) == len(set(names))


def test_a_package_locked_twice_differently_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("six==1.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    (tmp_path / "b.txt").write_text("six==1.17.0 \\\n    --hash=sha256:" + "b" * 64 + "\n")
    with pytest.raises(SystemExit, match="six is locked differently"):
        merge_locks.merge([tmp_path / "a.txt", tmp_path / "b.txt"])  # type: ignore[attr-defined]


def test_the_installed_environment_is_the_locked_one() -> None:
    """What this suite runs on is what the locks say (skipped on the newest-versions run)."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get("PAINLINE_INSTALL") == "latest":
        pytest.skip("the newest-versions run installs unlocked on purpose")
    wrong = []
    for name, locked in pins("core", *EXTRAS).items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            wrong.append(f"{name} not installed")
            continue
        if installed != locked:
            wrong.append(f"{name} {installed} installed, {locked} locked")
    assert wrong == []
