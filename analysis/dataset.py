"""Dataset manifests: one row per clip with ``path``, ``label`` and ``speaker_id``.

Paths are relative to the manifest's folder. Extra columns (corpus metadata) are kept in ``meta``
so protocols can use them (e.g. donateacry's ``platform``) without the loader knowing them.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REQUIRED_COLUMNS = ("path", "label", "speaker_id")


class ManifestError(ValueError):
    """The manifest is missing, lacks a required column, or names a file that does not exist."""


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    speaker_id: str
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Dataset:
    name: str
    clips: tuple[Clip, ...]
    manifest_sha256: str

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips])

    @property
    def speakers(self) -> np.ndarray:
        return np.array([c.speaker_id for c in self.clips])

    def __len__(self) -> int:
        return len(self.clips)


def load_manifest(manifest: str | Path, name: str | None = None, check_files: bool = True) -> Dataset:
    """Read a manifest CSV. ``manifest`` may be the CSV itself or the folder holding manifest.csv."""
    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.exists():
        raise ManifestError(f"no manifest at {manifest}")
    raw = manifest.read_bytes()
    rows = list(csv.DictReader(raw.decode("utf-8").splitlines()))
    if not rows:
        raise ManifestError(f"{manifest} has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise ManifestError(f"{manifest} lacks column(s) {', '.join(missing)}; needs {REQUIRED_COLUMNS}")
    root = manifest.parent
    clips = []
    for row in rows:
        path = root / row["path"]
        if check_files and not path.exists():
            raise ManifestError(f"{manifest} names a missing file: {row['path']}")
        meta = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}
        clips.append(Clip(path=path, label=row["label"], speaker_id=row["speaker_id"], meta=meta))
    return Dataset(
        name=name or manifest.parent.name,
        clips=tuple(clips),
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
    )
