"""Run directories: named by a hash of the experiment's JSON description, written atomically, resumable.

A run directory ``<root>/<prefix>-<hash12>`` holds ``description.json`` (human-readable, the exact
description that was hashed) and the run's checkpoints. Opening the same description again returns the same
directory (the run resumes; nothing is overwritten); a directory of that name holding a *different*
description is an error. Every file is written to a temporary file in the same directory and moved into place
with ``os.replace``, so a killed process leaves either the old file or the new one, never half a file.
Tensors are saved with ``torch.save`` of state dicts / plain containers only and loaded with
``weights_only=True``; masks go through :meth:`Masks.save` (``.npz``). Files are created with the user's
umask (mode ``0o666 & ~umask``), so a shared run is readable by whoever the umask allows.

**Code identity.** A run directory also records the code it is written with (``code.json``, from
:func:`code_identity`: a SHA-256 of netgeom's sources, and the git commit and dirty flag where netgeom is a
git checkout). Reopening it with other code raises :class:`CodeMismatchError` naming both identities: its
finished levels were computed by the other code, and resumed levels would mix the two.

**Reading a finished run.** :meth:`RunDir.open` opens an existing run directory read-only, whatever code wrote
it (``netgeom.read_run`` builds an IMP run's result from it, with the recorded code identity attached): it
creates, locks and writes nothing, and reads every file through the same validating loaders as a resume.

**Lock.** A process holds an exclusive lock (``run.lock`` in the directory, via ``filelock``; the kernel
releases it when the process dies, even by ``kill -9``) while it reads and writes a run (:meth:`RunDir.lock`).
A second process on the same run *waits* for the first to finish, with a warning "run X is in use by process
N; waiting" (``timeout`` seconds at most, then :class:`RunInUseError` "run X is in use by process N"); it
then finds the levels complete and reads them back, so both end with the same results and the work is done
once.

**Validation on reading.** Every file read back is checked: JSON for syntax, keys and value types (against
the dataclass it records), tensors for names, shapes and dtypes against the model, masks for binary values,
names and shapes. A bad file raises :class:`CorruptRunFileError`: "FILE is corrupt (reason); delete
DIR/level_K to recompute that level" (or what else recovers it), never torch's/numpy's advice to switch
off their safe loaders: nothing here is ever loaded with pickling enabled.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> run = RunDir(root, {"model": "mlp", "seed": 0}, prefix="demo")
>>> run.path.name == "demo-" + description_hash({"seed": 0, "model": "mlp"})
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import types
import typing
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write, check_pickle_expansion, safe_reason
from .._validation import check_masks
from ..results import to_plain
from .masks import Masks, _prunable_names, _weight_value

__all__ = [
    "RunDir",
    "RunInUseError",
    "CorruptRunFileError",
    "CodeMismatchError",
    "IncompleteRunError",
    "code_identity",
    "description_hash",
    "canonical_json",
    "atomic_write_bytes",
    "atomic_torch_save",
    "run_lock",
    "load_state_file",
]


class RunInUseError(RuntimeError):
    """Another process holds the run directory's lock."""


class CorruptRunFileError(ValueError):
    """A file of a run directory does not hold what netgeom wrote there; the message says how to recover."""


class CodeMismatchError(ValueError):
    """A run directory was written by other code than the one running (see :func:`code_identity`)."""


class IncompleteRunError(ValueError):
    """A run directory read back (``netgeom.read_run``) has levels that are not finished."""


# how to look at a run this code refuses to reopen (CodeMismatchError)
_READ_HINT = "to look at its results, netgeom.read_run({path!r}) (`netgeom read {path}`) reads them read-only"
_OPEN_HINT = "to look at its results, RunDir.open({path!r}) opens it read-only"


# ------------------------------------------------------------------------------------------ code identity
_PACKAGE = Path(__file__).resolve().parent.parent


def _sources_sha256(dirs: tuple[Path, ...]) -> str:
    """SHA-256 over the ``*.py`` files under ``dirs``: relative path, size and bytes of each, in sorted order
    (the same sources give the same hash in a git checkout, an installed wheel or a copy)."""
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(p for p in d.rglob("*.py") if "__pycache__" not in p.parts):
            data = f.read_bytes()
            h.update(f"{d.name}/{f.relative_to(d).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


# at import: the sources this process loaded, not what a later edit of the files says
_NETGEOM_SHA256 = _sources_sha256((_PACKAGE,))


@functools.cache
def _extra_sha256(dirs: tuple[Path, ...]) -> str:
    return _sources_sha256(dirs)


def _git(cwd: Path, *cmd: str) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _git_state(dirs: tuple[Path, ...]) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``dirs``; ``(None, None)`` when netgeom is not a tracked
    part of one (an installed package) or git is missing; dirty ``None`` when a directory lies outside it."""
    if not _git(_PACKAGE, "ls-files", "--", "*.py"):
        return None, None
    commit = _git(_PACKAGE, "rev-parse", "HEAD")
    top = _git(_PACKAGE, "rev-parse", "--show-toplevel")
    if commit is None or top is None:
        return commit, None
    top_path = Path(top).resolve()
    if not all(d == top_path or top_path in d.parents for d in dirs):
        return commit, None
    status = _git(_PACKAGE, "status", "--porcelain", "--", *(f"{d}/*.py" for d in dirs))
    return commit, (bool(status) if status is not None else None)


def code_identity(*extra: str | os.PathLike) -> dict[str, Any]:
    """The identity of the code a run is computed with: ``sources_sha256`` (SHA-256 of the ``*.py`` files of
    netgeom, as imported by this process, and of each directory in ``extra``, e.g. an experiment's scripts),
    ``sources`` (their directory names), ``git_commit`` and ``git_dirty`` (of the checkout netgeom lies in;
    ``None`` without one). Run directories compare ``sources`` and ``sources_sha256``; the git fields say
    where the code came from."""
    dirs = (_PACKAGE, *(Path(e).expanduser().resolve() for e in extra))
    for d in dirs[1:]:
        if not d.is_dir():
            raise NotADirectoryError(f"code_identity: {d} is not a directory of sources")
    sha = _NETGEOM_SHA256 if len(dirs) == 1 else _extra_sha256(dirs)
    commit, dirty = _git_state(dirs)
    return {"sources": [d.name for d in dirs], "sources_sha256": sha, "git_commit": commit,
            "git_dirty": dirty}


_CODE_SCHEMA = {"sources": list[str], "sources_sha256": str, "git_commit": str | None,
                "git_dirty": bool | None}


def _code_text(code: Mapping[str, Any]) -> str:
    commit = code.get("git_commit")
    git = ("no git checkout" if commit is None else
           f"git commit {commit[:12]}" + {True: " with uncommitted changes", False: " (clean)",
                                          None: " (dirty state unknown)"}[code.get("git_dirty")])
    return f"sources {'+'.join(code.get('sources', []))} sha256 {str(code.get('sources_sha256'))[:16]}, {git}"


def _code_record(code: Mapping[str, Any] | None) -> dict[str, Any]:
    """``code`` checked as a :func:`code_identity` record (``None``: this process's netgeom)."""
    code = dict(code_identity() if code is None else code)
    try:
        check_record(code, _CODE_SCHEMA, "code")
    except ValueError as exc:
        raise TypeError(f"code must be a code_identity() record: {exc}") from None
    return code


def _same_code(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two code identities are the same code: their sources (git fields say where it came from)."""
    return (a["sources"], a["sources_sha256"]) == (b["sources"], b["sources_sha256"])


def _non_finite_path(value: Any, where: str = "") -> str | None:
    """The key path of the first NaN/inf number in a description, or ``None``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return where or "(value)" if value.dtype.kind in "fc" and not np.isfinite(value).all() else None
    if isinstance(value, (float, np.floating)):
        return (where or "(value)") if not math.isfinite(float(value)) else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            bad = _non_finite_path(v, f"{where}.{k}" if where else str(k))
            if bad:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _non_finite_path(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


def canonical_json(description: Mapping[str, Any]) -> str:
    """The JSON text that is hashed: keys sorted, no whitespace, numpy/torch values made plain.

    NaN and inf are refused (JSON has no such numbers, and writing them as strings would hash ``nan`` like
    the string ``"nan"``).
    """
    if not isinstance(description, Mapping):
        raise TypeError(f"a run description must be a mapping, got {type(description).__name__}")
    bad = _non_finite_path(description)
    if bad:
        raise ValueError(f"the run description has a non-finite number (NaN or inf) at '{bad}'")
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


# ------------------------------------------------------------------------------------------ JSON schemas
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}  # how to_plain writes them


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` (read from JSON) checked against a type hint; returns it with special floats restored.
    Raises ``ValueError(reason)``; hints that JSON cannot express are passed through unchecked."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for h in typing.get_args(hint):
            try:
                return _check_value(value, h, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: unexpected value")
    if hint is type(None):
        if value is None:
            return None
        raise ValueError(f"{where} must be null, got {_short(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true/false, got {_short(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be an integer, got {_short(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        raise ValueError(f"{where} must be a number, got {_short(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string, got {_short(value)}")
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {_short(value)}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {_short(value)}")
        _, item = typing.get_args(hint) or (str, Any)
        return {k: _check_value(v, item, f"{where}.{k}") for k, v in value.items()}
    return value  # a type JSON does not hold (tensors, Masks, nested results): the caller checks it


def _short(value: Any) -> str:
    r = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return r if len(r) <= 40 else r[:37] + "..."


def check_record(obj: Any, schema: Any, where: str = "record") -> dict[str, Any]:
    """Check a JSON object against ``schema``: a dataclass type (its fields and type hints; fields without a
    default are required, unknown keys refused) or a mapping ``{key: type}`` (every key required). Returns
    a new dict with NaN/inf restored from their string form. Raises ``ValueError(reason)``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        fields = {f.name: f for f in dataclasses.fields(schema)}
        required = {
            n for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        types_ = {n: hints.get(n, Any) for n in fields}
    else:
        types_ = dict(schema)
        required = set(types_)
    missing = sorted(required - set(obj))
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    unknown = sorted(set(obj) - set(types_))
    if unknown:
        raise ValueError(f"{where} has unexpected keys {unknown}")
    return {k: _check_value(v, types_[k], f"{where}.{k}" if where else k) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ the directory
class RunDir:
    """The directory of one experiment, created or reopened from its description.

    ``RunDir(root, description)`` creates ``root/<prefix>-<hash>`` with ``description.json``, or reopens it if
    it exists with the same description; raises ``FileExistsError`` if it holds another description.
    """

    def __init__(self, root: str | os.PathLike, description: Mapping[str, Any], *, prefix: str = "run",
                 code: Mapping[str, Any] | None = None):
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain name, got {prefix!r}")
        # the code this run is computed with (see code_identity); a run of other code is refused below
        self.code = _code_record(code)
        self.description = json.loads(canonical_json(description))
        self.hash = description_hash(description)
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"output directory {root} exists but is a file; choose a directory")
        self.path = root / f"{prefix}-{self.hash}"
        self.readonly = False
        self.resumed = self.path.exists() or not self._create()
        self._lock = None
        if self.resumed:
            if canonical_json(self._read_description()) != canonical_json(self.description):
                raise FileExistsError(
                    f"{self.path} holds a different description than the one requested (hash collision or an "
                    "edited description.json); refusing to reuse or overwrite it"
                )
            self._check_code()

    @classmethod
    def open(cls, path: str | os.PathLike, *, code: Mapping[str, Any] | None = None) -> RunDir:
        """An existing run directory, opened read-only whatever code wrote it: to look at a finished run.

        Nothing is created, locked or written (the ``save_*``/``remove`` methods raise ``PermissionError``;
        :meth:`lock` holds nothing, since a finished level's files never change: ``record.json``, written
        last, marks it finished). ``description.json`` must hash to the directory's name, as when a run is
        reopened by its description. ``code`` is the identity ``code.json`` records, ``None`` for a run
        written before run directories recorded one; ``code_now`` is the reading code's: the ``code``
        argument (as ``RunDir(..., code=)`` takes it, e.g. ``code_identity(scripts_dir)`` for runs whose
        scripts shape them too), by default :func:`code_identity`.
        The ``load_*`` methods validate as for a resume; when the run's code is not the reading code, a
        corrupt-file message adds that the file may be intact but other than what this code expects.

        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> path = RunDir(root, {"model": "mlp"}, prefix="demo").path
        >>> run = RunDir.open(path)
        >>> run.readonly, run.description, run.code == code_identity()
        (True, {'model': 'mlp'}, True)
        """
        self = cls.__new__(cls)
        self.path = Path(path)
        self.readonly, self.resumed, self._lock = True, True, None
        if not self.path.is_dir():
            raise (NotADirectoryError if self.path.exists() else FileNotFoundError)(
                f"no run directory at {self.path}"
            )
        if not (self.path / "description.json").exists():
            raise FileNotFoundError(f"{self.path} has no description.json: not a netgeom run directory")
        self.description = json.loads(canonical_json(self._read_description()))
        self.hash = description_hash(self.description)
        if not self.path.name.endswith(f"-{self.hash}") or self.path.name == f"-{self.hash}":
            raise CorruptRunFileError(
                f"{self.path / 'description.json'} does not hash to the run directory's name "
                f"({self.path.name}; its description hashes to {self.hash}): an edited description.json or a "
                "renamed directory, so the run cannot be identified; restore it as written"
            )
        self.code_now, self.code = _code_record(code), None
        self.code = self._read_code()
        return self

    def _read_description(self) -> dict[str, Any]:
        """``description.json`` of an existing directory, parsed (a JSON object) but not yet compared."""
        desc_file = self.path / "description.json"
        if not desc_file.exists():
            raise FileExistsError(
                f"{self.path} exists but has no description.json: not a netgeom run directory; "
                "move it away or choose another root"
            )
        try:
            existing = _read_json(desc_file.read_bytes())
            if not isinstance(existing, dict):
                raise ValueError(f"a JSON object was expected, got {type(existing).__name__}")
            canonical_json(existing)
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptRunFileError(
                f"{desc_file} is corrupt ({exc}); the run cannot be identified: move {self.path} away or "
                "delete it to start the run afresh"
            ) from None
        return existing

    def _read_code(self) -> dict[str, Any] | None:
        """The identity ``code.json`` records (validated), ``None`` without one (a run written before)."""
        if not self.exists("code.json"):
            return None
        return self.load_json("code.json", _CODE_SCHEMA)

    def _check_code(self) -> None:
        imp = self.description.get("kind") == "imp"
        hint = (_READ_HINT if imp else _OPEN_HINT).format(path=str(self.path))
        old = self._read_code()
        if old is None:
            raise CodeMismatchError(
                f"run {self.path} records no code identity (written by netgeom before run directories "
                "recorded one): its levels cannot be tied to the code running now; delete it to recompute "
                f"the run; {hint}" + (", marked as computed by unrecorded code" if imp else "")
            )
        if not _same_code(old, self.code):
            raise CodeMismatchError(
                f"run {self.path} was written by other code ({_code_text(old)}) than this process runs "
                f"({_code_text(self.code)}): its levels would be reported as this code's, and resumed ones "
                "would mix the two; delete it to recompute the run with this code, or run it with the code "
                f"it was written with; {hint}" + (", with the identity of the code that computed them"
                                                   if imp else "")
            )

    def _writable(self) -> None:
        if self.readonly:
            raise PermissionError(
                f"run {self.path} is open read-only (RunDir.open / read_run): nothing is written into it"
            )

    def _create(self) -> bool:
        """Create the directory with its description in one step; False if another process made it first.

        The description is written into a temporary sibling directory that is then renamed into place, so a
        run directory never exists without its ``description.json`` (a kill between ``mkdir`` and the write
        would otherwise leave a directory that can never be reopened), and two processes starting the same
        description race safely: ``os.rename`` onto an existing non-empty directory fails for the loser.
        """
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()  # not mkdtemp: its 0700 mode would stick to the run directory
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"cannot create the run directory {self.path} ({exc.strerror}); choose a writable output "
                "directory",
            ) from None
        try:
            text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(tmp / "description.json", text.encode())
            atomic_write_bytes(tmp / "code.json", (json.dumps(self.code, indent=2) + "\n").encode())
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

    # -------------------------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[RunDir]:
        """Hold the run's exclusive lock for the ``with`` block (re-entrant within one ``RunDir``).

        If another process holds it, warn once ("run X is in use by process N; waiting") and wait, at most
        ``timeout`` seconds (``None``: until it is free; ``0``: not at all), then raise
        :class:`RunInUseError` "run X is in use by process N".
        """
        from filelock import FileLock, Timeout

        if self.readonly:  # nothing to exclude: a reader sees finished files only, and writes none
            yield self
            return
        if self._lock is not None:  # already held by this object: nested use
            yield self
            return
        lock = FileLock(str(self.path / "run.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = self._owner()
            if timeout is not None and timeout <= 0:
                raise RunInUseError(f"run {self.path} is in use by {owner}") from None
            warnings.warn(f"run {self.path} is in use by {owner}; waiting for it to finish", stacklevel=3)
            try:
                lock.acquire(timeout=-1 if timeout is None else timeout)
            except Timeout:
                raise RunInUseError(
                    f"run {self.path} is in use by {self._owner()} (waited {timeout} s)"
                ) from None
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise type(exc)(exc.errno, f"cannot lock the run {self.path} ({exc.strerror})") from None
            # a run shared read-only (a colleague's finished run): it can be read, never written, so no
            # writer of ours needs excluding; a write would fail with an OSError naming the file
            warnings.warn(
                f"run {self.path} is not writable ({exc.strerror}): reading it without a lock", stacklevel=3
            )
            yield self
            return
        self._lock = lock
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            atomic_write_bytes(self.path / "run.lock.owner", json.dumps(info).encode())
            yield self
        finally:
            self._lock = None
            with contextlib.suppress(OSError):
                (self.path / "run.lock.owner").unlink()
            lock.release()

    def _owner(self) -> str:
        try:
            info = _read_json((self.path / "run.lock.owner").read_bytes())
            return f"process {int(info['pid'])} on {info.get('host', '?')}"
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            return "another process"  # it holds the lock but has not written its owner file yet

    # -------------------------------------------------------------------------------------- files
    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def remove(self, name: str) -> None:
        self._writable()
        p = self.path / name
        if p.exists():
            p.unlink()

    def recovery(self, name: str) -> str:
        """How to recover from a corrupt file ``name`` of this run (read-only, from other code: and that the
        file may be intact, but not what this code expects)."""
        how = self._recovery(name)
        other = self.readonly and (self.code is None or not _same_code(self.code, self.code_now))
        if other and name != "code.json":
            who = ("records no code identity, so it may have been written by other code" if self.code is None
                   else f"was written by other code ({_code_text(self.code)})")
            how += (f" (the run {who} than the code reading it ({_code_text(self.code_now)}): if the file is "
                    "intact, this code expects another file there; read the run with the code that wrote it)")
        return how

    def _recovery(self, name: str) -> str:
        m = re.match(r"(level_\d+)/", name)
        if m:
            return f"delete {self.path / m.group(1)} to recompute that level"
        if name == "data_fingerprint.json":
            return f"delete {self.path / name} to record the fingerprint of the current data again"
        if name == "numerics.json":
            return f"delete {self.path / name} to record the current threads and device again"
        return f"delete {self.path} to recompute the run"

    def corrupt(self, name: str, reason: str) -> CorruptRunFileError:
        return CorruptRunFileError(f"{self.path / name} is corrupt ({reason}); {self.recovery(name)}")

    @contextlib.contextmanager
    def reading(self, name: str) -> Iterator[None]:
        """Report any error while the contents of ``name`` are being used as a corrupt ``name``."""
        try:
            yield
        except CorruptRunFileError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as exc:
            raise self.corrupt(name, safe_reason(exc)) from None

    def save_json(self, name: str, obj: Any) -> Path:
        self._writable()
        return atomic_write_bytes(self.path / name, (json.dumps(to_plain(obj), indent=2) + "\n").encode())

    def load_json(self, name: str, schema: Any = None) -> Any:
        """Parse ``name``; with ``schema`` (see :func:`check_record`) check its keys and value types."""
        try:
            obj = _read_json((self.path / name).read_bytes())
        except FileNotFoundError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.corrupt(name, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise self.corrupt(name, "not valid JSON: nested too deeply to parse") from None
        if schema is None:
            return obj
        try:
            return check_record(obj, schema, "")
        except ValueError as exc:
            raise self.corrupt(name, str(exc)) from None

    def save_tensors(self, name: str, obj: Any) -> Path:
        self._writable()
        return atomic_torch_save(obj, self.path / name)

    def load_tensors(self, name: str, like: Mapping[str, torch.Tensor] | None = None) -> Any:
        """``torch.load(weights_only=True)`` of ``name``; with ``like`` (a state dict), the result must have
        the same keys, shapes and dtypes, and finite values."""
        return load_state_file(self.path / name, like, recovery=self.recovery(name))

    def save_masks(self, name: str, masks: Masks) -> Path:
        self._writable()
        return masks.save(self.path / name)

    def load_masks(self, name: str, model: torch.nn.Module | None = None) -> Masks:
        """Masks from ``name``; with ``model``, checked against it (names, shapes; see ``check_masks``)."""
        path = self.path / name
        if not path.exists():
            raise FileNotFoundError(f"no masks file at {path}")
        try:
            shapes = None
            if model is not None:  # checked from the file's headers, before any array is read
                # names only (no forward order needed, so no fx trace): computed weights included
                params = dict(model.named_parameters())
                shapes = {k: tuple(_weight_value(model, k, params).shape) for k in _prunable_names(model)}
            masks = Masks.load(path, shapes)
            if model is not None:
                check_masks(masks, model, require_all=False)
        except (ValueError, TypeError, KeyError) as exc:
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            raise self.corrupt(name, reason.replace(f"{path} ", "")) from None
        return masks

    def load_level(self, level: int, model: torch.nn.Module, record: type, history: type) -> tuple:
        """The files of a completed level ``level_K``, each validated: ``(record fields, masks, weights,
        history)``. ``record``/``history`` are the dataclasses recorded in ``record.json`` (the JSON must
        match their fields and types); masks and weights must match ``model``; the record must agree with
        its masks (count, density, layers) and hold accuracies in [0, 1]."""
        d = f"level_{level}"
        name = f"{d}/record.json"
        rec = self.load_json(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("history"), dict):
            raise self.corrupt(name, "no 'history' object")
        hist_raw = rec.pop("history")
        try:
            rec = check_record(rec, record, "")
            hist = check_record(hist_raw, history, "history")
        except ValueError as exc:
            raise self.corrupt(name, str(exc)) from None
        masks = self.load_masks(f"{d}/masks.npz", model)
        weights = self.load_tensors(f"{d}/weights.pt", like=model.state_dict())
        checks = [
            (rec.get("level") == level, f"it records level {rec.get('level')!r}"),
            (rec.get("n_kept", masks.n_kept()) == masks.n_kept(),
             f"n_kept {rec.get('n_kept')} but masks.npz keeps {masks.n_kept()}"),
            (abs(rec.get("density", masks.density()) - masks.density()) <= 1e-9,
             f"density {rec.get('density')} but masks.npz has {masks.density()}"),
            (set(rec.get("layer_sparsity", masks)) == set(masks), "its layers differ from masks.npz's"),
        ]
        for key, value in [*rec.items(), *((f"history.{k}", v) for k, v in hist.items())]:
            if key.endswith("_acc"):
                vals = value if isinstance(value, list) else [value]
                checks.append((all(0.0 <= v <= 1.0 for v in vals), f"{key} = {value} is not in [0, 1]"))
        for ok, why in checks:
            if not ok:
                raise self.corrupt(name, why)
        return rec, masks, weights, history(**hist)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number netgeom writes (non-finite values are saved as strings)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):  # 1e999 parses to inf
        raise ValueError(f"{text} overflows to {v}")
    return v


def _read_json(data: bytes) -> Any:
    """JSON as netgeom writes it: UTF-8, finite numbers only (``NaN``, ``Infinity`` and ``1e999`` are refused,
    never read as floats that would pass for values)."""
    return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)


def _check_pickles(path: Path) -> None:
    """Refuse a torch file whose pickles expand beyond reason before ``torch.load`` builds them (see
    :func:`netgeom._io.check_pickle_expansion`): a few hundred bytes could otherwise hang the load."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    if info.file_size > MAX_PICKLE_BYTES:
                        raise ValueError(f"its {info.filename} holds {info.file_size} bytes of pickle")
                    with zf.open(info) as f:
                        check_pickle_expansion(f)
    else:  # torch's legacy format: magic number, protocol, system info, then the objects
        with open(path, "rb") as f:
            for _ in range(4):
                check_pickle_expansion(f)


MAX_PICKLE_BYTES = 1 << 28


def load_state_file(
    path: str | os.PathLike, like: Mapping[str, torch.Tensor] | None = None, *, recovery: str | None = None
) -> Any:
    """Tensors from ``path`` (``torch.load`` with ``weights_only=True``); with ``like`` (a state dict) the
    result must have its keys, shapes and dtypes and hold finite values. A bad file raises
    :class:`CorruptRunFileError` "PATH is corrupt (reason); RECOVERY" (default recovery: recompute the level
    ``level_K`` the file is in, else delete the file)."""
    path = Path(path)
    if recovery is None:
        where = path.parent if re.fullmatch(r"level_\d+", path.parent.name) else path
        recovery = f"delete {where} to recompute {'that level' if where != path else 'it'}"

    def corrupt(reason: str) -> CorruptRunFileError:
        return CorruptRunFileError(f"{path} is corrupt ({reason}); {recovery}")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols is noise here
            _check_pickles(path)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        raise corrupt(safe_reason(exc)) from None
    if like is None:
        return obj
    if not isinstance(obj, Mapping):
        raise corrupt(f"a state dict was expected, got {type(obj).__name__}")
    if set(obj) != set(like):
        missing, extra = sorted(set(like) - set(obj)), sorted(set(obj) - set(like))
        raise corrupt(f"its tensors do not match the model (missing {missing}, unexpected {extra})")
    for k, ref in like.items():
        t = obj[k]
        if not isinstance(t, torch.Tensor):
            raise corrupt(f"'{k}' is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise corrupt(
                f"'{k}' has shape {tuple(t.shape)} and dtype {t.dtype}, the model's has {tuple(ref.shape)} "
                f"and {ref.dtype}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise corrupt(f"'{k}' holds NaN or inf")
    return obj


@contextlib.contextmanager
def run_lock(run: RunDir | None, timeout: float | None = None) -> Iterator[RunDir | None]:
    """``run.lock(timeout)`` for a run directory, nothing for ``None`` (a run without checkpoints)."""
    if run is None:
        yield None
    else:
        with run.lock(timeout):
            yield run
