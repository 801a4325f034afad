"""Atomic file writes (a checkpoint is either the old file or the complete new one, never a torn one) and
safe reads (a file that does not parse is reported by name, without passing on advice to load it unsafely)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "safe_reason"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.

    The fsync before the rename matters: without it a crash of the machine (not only of the process) can
    leave the new name pointing at an empty file. The temporary file is created with mode ``0o666`` filtered
    by the process umask, like any file the user creates (``tempfile.mkstemp`` would force ``0o600`` and
    colleagues could not read a shared run). A directory that cannot be written raises an ``OSError`` of the
    same kind whose message names ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise type(exc)(
            exc.errno, f"cannot write {path} ({exc.strerror}); is the directory writable?"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_UNSAFE_ADVICE = re.compile(r"weights_only|allow_pickle|arbitrary code|torch\.serialization|add_safe_globals")


def safe_reason(exc: BaseException) -> str:
    """A one-line reason for a failed load, with any advice to disable ``weights_only`` / ``allow_pickle``
    removed (it would tell the user to run code from a file that failed a safety check)."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m:
        return f"it holds Python objects other than tensors and plain data: {m.group(1).strip()}"
    if "Object arrays cannot be loaded" in text or "contains pickled" in text:
        return "it holds pickled Python objects, which are never loaded"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _UNSAFE_ADVICE.search(ln)]
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# A pickle can refer back to an object it built (its memo), so a file of a few hundred bytes can describe
# nested tuples with 2**40 leaves: hashing one as a dict key, or printing it, never ends. Before any
# unpickler sees a stream, its opcodes are replayed counting the nodes each object would expand to.
MAX_PICKLE_NODES = 10_000_000
_MEMO_PUT = ("PUT", "BINPUT", "LONG_BINPUT")
_MEMO_GET = ("GET", "BINGET", "LONG_BINGET")


def check_pickle_expansion(stream: BinaryIO, limit: int = MAX_PICKLE_NODES) -> None:
    """Read one pickle from ``stream`` (up to its STOP) without building anything, and raise ``ValueError``
    if its objects, with every shared reference expanded, would hold more than ``limit`` nodes (or if the
    stream is malformed)."""
    import pickletools

    stack: list[int | None] = []  # expanded size of each stack item; None marks a MARK
    memo: dict[int, int] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in _MEMO_PUT:
                memo[arg] = stack[-1]
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
                continue
            if name in _MEMO_GET:
                stack.append(memo[arg])
                continue
            if name == "MARK":
                stack.append(None)
                continue
            if name == "STOP":
                return
            before, size = op.stack_before, 1
            n_plain = len(before)
            if pickletools.stackslice in before:
                while stack[-1] is not None:
                    size += stack.pop()
                stack.pop()
                n_plain -= 2
            for _ in range(n_plain):
                v = stack.pop()
                if v is None:
                    raise ValueError("a MARK where an object was expected")
                size += v
            if size > limit:
                raise ValueError(
                    f"its objects refer to each other so as to expand to more than {limit} items (a "
                    "decompression bomb: hashing or printing it would not finish)"
                )
            stack.extend(size for _ in op.stack_after)
    except (IndexError, KeyError) as exc:
        raise ValueError(f"malformed pickle stream ({type(exc).__name__}: {exc})") from None
    raise ValueError("malformed pickle stream (no STOP)")
