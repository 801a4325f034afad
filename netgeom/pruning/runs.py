"""Run directories: named by a hash of the experiment's JSON description, written atomically, resumable.

A run directory ``<root>/<prefix>-<hash12>`` holds ``description.json`` (human-readable, the exact
description that was hashed) and the run's checkpoints. Opening the same description again returns the same
directory (the run resumes; nothing is overwritten); a directory of that name holding a *different*
description is an error. Every file is written to a temporary file in the same directory and moved into place
with ``os.replace``, so a killed process leaves either the old file or the new one, never half a file.
Tensors are saved with ``torch.save`` of state dicts / plain containers only and loaded with
``weights_only=True``; masks go through :meth:`Masks.save` (``.npz``).

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> run = RunDir(root, {"model": "mlp", "seed": 0}, prefix="demo")
>>> run.path.name == "demo-" + description_hash({"seed": 0, "model": "mlp"})
True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ..results import to_plain
from .masks import Masks

__all__ = ["RunDir", "description_hash", "canonical_json", "atomic_write_bytes", "atomic_torch_save"]


def canonical_json(description: Mapping[str, Any]) -> str:
    """The JSON text that is hashed: keys sorted, no whitespace, numpy/torch values made plain."""
    if not isinstance(description, Mapping):
        raise TypeError(f"a run description must be a mapping, got {type(description).__name__}")
    try:
        return json.dumps(to_plain(dict(description)), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the run description is not JSON-able: {exc}") from None


def description_hash(description: Mapping[str, Any], length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(description).encode()).hexdigest()[:length]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file, then ``os.replace`` (state dicts and plain containers only)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


class RunDir:
    """The directory of one experiment, created or reopened from its description.

    ``RunDir(root, description)`` creates ``root/<prefix>-<hash>`` with ``description.json``, or reopens it if
    it exists with the same description; raises ``FileExistsError`` if it holds another description.
    """

    def __init__(self, root: str | os.PathLike, description: Mapping[str, Any], *, prefix: str = "run"):
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain name, got {prefix!r}")
        self.description = json.loads(canonical_json(description))
        self.hash = description_hash(description)
        self.path = Path(root) / f"{prefix}-{self.hash}"
        desc_file = self.path / "description.json"
        self.resumed = self.path.exists() or not self._create()
        if self.resumed:
            if not desc_file.exists():
                raise FileExistsError(
                    f"{self.path} exists but has no description.json: not a netgeom run directory; "
                    "move it away or choose another root"
                )
            existing = json.loads(desc_file.read_text())
            if canonical_json(existing) != canonical_json(self.description):
                raise FileExistsError(
                    f"{self.path} holds a different description than the one requested (hash collision or an "
                    "edited description.json); refusing to reuse or overwrite it"
                )

    def _create(self) -> bool:
        """Create the directory with its description in one step; False if another process made it first.

        The description is written into a temporary sibling directory that is then renamed into place, so a
        run directory never exists without its ``description.json`` (a kill between ``mkdir`` and the write
        would otherwise leave a directory that can never be reopened), and two processes starting the same
        description race safely: ``os.rename`` onto an existing non-empty directory fails for the loser.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()  # not mkdtemp: its 0700 mode would stick to the run directory
        try:
            text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(tmp / "description.json", text.encode())
            try:
                os.rename(tmp, self.path)
            except OSError:
                if self.path.is_dir():
                    return False
                raise
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resumed={self.resumed})"

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def remove(self, name: str) -> None:
        p = self.path / name
        if p.exists():
            p.unlink()

    def save_json(self, name: str, obj: Any) -> Path:
        return atomic_write_bytes(self.path / name, (json.dumps(to_plain(obj), indent=2) + "\n").encode())

    def load_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def save_tensors(self, name: str, obj: Any) -> Path:
        return atomic_torch_save(obj, self.path / name)

    def load_tensors(self, name: str) -> Any:
        return torch.load(self.path / name, map_location="cpu", weights_only=True)

    def save_masks(self, name: str, masks: Masks) -> Path:
        return masks.save(self.path / name)

    def load_masks(self, name: str) -> Masks:
        return Masks.load(self.path / name)
