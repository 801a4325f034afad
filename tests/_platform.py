"""What a test's subject needs from the machine, and whether CI's machines are known to have it: there a
missing feature fails the test (it would otherwise pass without running what it tests); elsewhere it skips,
naming why."""

import platform
import sys
import threading

import pytest
import torch

#: every machine CI runs on: x86-64 Linux, torch parallelising with OpenMP (libgomp)
X86_LINUX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
OPENMP = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), or an empty set."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unavailable(why: str, *, expected: bool) -> None:
    """Skip: ``why`` names what this machine lacks. Fail instead where it is ``expected`` to be there."""
    if expected:
        pytest.fail(f"{why}, though this machine should have it: the test would not run what it tests")
    pytest.skip(why)


def in_fresh_thread(fn):
    """``fn()`` on a new thread (its own OpenMP team, started by its first parallel operation); returns
    the result or re-raises."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
