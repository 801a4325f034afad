"""A finished run directory is read back read-only with the code identity it records (read_run), while
reopening it to compute with other code stays refused (CodeMismatchError)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_runs import CORRUPTIONS as RESUME_CORRUPTIONS

import netgeom.cli
from netgeom.data.datasets import load_digits
from netgeom.pruning import (
    IMP,
    CodeMismatchError,
    CorruptRunFileError,
    IMPConfig,
    IncompleteRunError,
    RunDir,
    code_identity,
    read_run,
    read_sweep,
)
from netgeom.training import TrainConfig

CFG = IMPConfig(
    model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
    data={"name": "digits", "seed": 0},
    train=TrainConfig(epochs=1, batch_size=64, lr=0.05),
    rounds=2,
)
# the identity of a netgeom that is not this one (as after an upgrade)
OLD = {"sources": ["netgeom"], "sources_sha256": "d1e7" * 16, "git_commit": "c0ffee" * 6 + "c0ff",
       "git_dirty": True}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    res = IMP(CFG, out_dir=root, verbose=False, data=load_digits(seed=0), threads=1, code=OLD).run()
    return root, res


@pytest.fixture
def run(written, tmp_path):
    """A copy of the finished run of other code, to be read or damaged."""
    root, res = written
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return tmp_path / Path(res.run_dir).name


def _tree(path: Path) -> dict:
    """Every entry under ``path`` with its bytes (files) and mtime: a read must change none of them."""
    out = {}
    for p in sorted([path, *path.rglob("*")]):
        st = p.stat()
        out[str(p.relative_to(path))] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns, st.st_mode)
    return out


_WRITES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.utime", "os.chmod", "os.chown",
           "os.truncate", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_seen: list | None = None


def _audit(event, args):
    if _seen is None or not args:
        return
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
    else:
        path, writes = args[0], event in _WRITES
    if writes and isinstance(path, (str, bytes, os.PathLike)):
        _seen.append((event, os.fsdecode(path)))


@contextlib.contextmanager
def _no_writes(path: Path):
    """Fail if anything under ``path`` is opened for writing, created, moved or removed by this process
    (Python's audit events: every file Python opens, whatever the permissions, even as root)."""
    global _seen
    if not getattr(_no_writes, "hooked", False):
        sys.addaudithook(_audit)  # for the process's life: idle unless _seen is a list
        _no_writes.hooked = True
    _seen = []
    try:
        yield
    finally:
        seen, _seen = _seen, None
    root = str(path.resolve())
    assert not [e for e in seen if os.path.abspath(e[1]).startswith(root)], seen


def _same_levels(a, b):
    assert len(a.levels) == len(b.levels) == CFG.rounds + 1
    for la, lb in zip(a.levels, b.levels):
        assert la.masks.equals(lb.masks)
        assert (la.train_acc, la.test_acc, la.train_loss, la.test_loss, la.n_kept, la.density) == (
            lb.train_acc, lb.test_acc, lb.train_loss, lb.test_loss, lb.n_kept, lb.density)
        assert la.weights.keys() == lb.weights.keys()
        assert all(torch.equal(la.weights[k], lb.weights[k]) for k in la.weights)
        assert la.history.to_dict() == lb.history.to_dict()


def test_a_run_of_other_code_is_read_with_its_code_and_nothing_in_it_changes(written, run):
    _, res = written
    before = _tree(run)
    with _no_writes(run):
        back = read_run(run)
    assert _tree(run) == before  # no lock file, no owner file, no rewritten checkpoint
    _same_levels(back, res)
    assert back.code == res.code == OLD and back.complete
    assert "computed by other code" in back.code_note and "d1e7d1e7d1e7d1e7" in back.code_note
    assert code_identity()["sources_sha256"][:16] in back.code_note
    d, ref = json.loads(back.to_json()), res.to_dict()
    assert d["code"] == OLD and d["complete"] is True and d["code_note"] == back.code_note
    assert ref["code_note"] is None
    # the weights files read (in the copy) and written (at the original)
    for out, where in ((d, run), (ref, Path(res.run_dir))):
        assert [lv.pop("weights_path") for lv in out["levels"]] == [
            str(where / f"level_{k}" / "weights.pt") for k in range(3)]
    assert {k: v for k, v in d.items() if k not in ("code_note", "run_dir")} == {
        k: v for k, v in ref.items() if k not in ("code_note", "run_dir")}
    # read by the code that wrote it, it says so
    same = read_run(run, code=OLD)
    assert same.code == OLD and "written by the code reading it" in same.code_note
    # the result works as a computed one
    assert torch.equal(back.model_at(2)[0].weight, res.model_at(2)[0].weight)
    # the sweep that wrote it, read back the same way
    (swept,) = read_sweep([CFG], run.parent)
    _same_levels(swept, res)
    assert swept.code == OLD
    with pytest.raises(FileNotFoundError, match=r"configs\[0\] has no run directory"):
        read_sweep([CFG.with_seed(1)], run.parent)
    assert _tree(run) == before


def test_reopening_it_to_compute_with_this_code_is_still_refused_and_names_the_reader(run):
    before = _tree(run)
    with pytest.raises(CodeMismatchError, match="written by other code") as err:
        IMP(CFG, out_dir=run.parent, verbose=False)
    assert f"netgeom.read_run({str(run)!r})" in str(err.value) and f"netgeom read {run}" in str(err.value)
    assert _tree(run) == before


def test_a_run_written_before_code_json_is_read_and_marked_unknown(written, run):
    _, res = written
    (run / "code.json").unlink()
    back = read_run(run)
    _same_levels(back, res)
    assert back.code is None and "records no code identity" in back.code_note
    assert "computed with is unknown" in back.code_note
    assert json.loads(back.to_json())["code"] is None
    with pytest.raises(CodeMismatchError, match="records no code identity") as err:
        IMP(CFG, out_dir=run.parent, verbose=False)
    assert "read_run" in str(err.value)


# the resume tests' damage, as a reader meets it, plus what only a read-only open checks itself
CORRUPTIONS = {
    **{k: RESUME_CORRUPTIONS[k] for k in (
        "record truncated", "record accuracy 1.5", "masks garbage", "weights pickle payload",
        "weights wrong shape")},
    "code.json wrong type": (
        "code.json", lambda p: p.write_text(json.dumps({**OLD, "git_dirty": "yes"})), "git_dirty"),
    "description edited": (
        "description.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "rounds": 1})),
        "does not hash to the run directory's name",
    ),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corrupt_file_is_named_and_never_executed(run, name):
    rel, damage, reason = CORRUPTIONS[name]
    damage(run / rel)
    with pytest.raises(CorruptRunFileError, match=reason) as err:
        read_run(run)
    msg = str(err.value)
    assert str(run / rel) in msg and "weights_only" not in msg
    if rel.startswith("level_"):
        # written by other code: the file may be intact and only not what this code expects
        assert "written by other code" in msg and f"delete {run / rel.split('/')[0]}" in msg
    assert not list(run.rglob("*.pwned"))


def test_an_unfinished_run_is_refused_or_read_as_such(written, run):
    _, res = written
    shutil.rmtree(run / "level_2")  # interrupted before level 2 finished
    with pytest.raises(IncompleteRunError, match=r"level\(s\) \[2\] of 0..2 are not finished.*partial=True"):
        read_run(run)
    part = read_run(run, partial=True)
    assert not part.complete and json.loads(part.to_json())["complete"] is False
    assert [lv.level for lv in part.levels] == [0, 1]
    assert all(a.masks.equals(b.masks) for a, b in zip(part.levels, res.levels))
    (run / "level_0" / "record.json").unlink()  # a finished level after an unfinished one: not IMP's doing
    with pytest.raises(CorruptRunFileError, match="level_1/record.json is corrupt .level 0 before it"):
        read_run(run, partial=True)


def test_other_directories_are_opened_read_only_but_not_read_as_imp_runs(tmp_path):
    rd = RunDir(tmp_path, {"kind": "regions", "x": 1}, prefix="unit")
    rd.save_json("r.json", {"a": 1})
    ro = RunDir.open(rd.path)
    assert ro.load_json("r.json") == {"a": 1} and ro.code == code_identity()
    with pytest.raises(PermissionError, match="read-only"):
        ro.save_json("r.json", {"a": 2})
    with pytest.raises(ValueError, match="not an IMP run .*RunDir.open"):
        read_run(rd.path)
    with pytest.raises(FileNotFoundError, match="no run directory"):
        read_run(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no description.json"):
        read_run(tmp_path)


def test_cli_read_shows_the_levels_and_their_code(written, run, capsys):
    _, res = written
    assert netgeom.cli.main(["read", str(run)]) == 0
    out = capsys.readouterr().out
    assert "computed by other code" in out and f"{res.levels[2].test_acc:.4f}" in out
    assert netgeom.cli.main(["read", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["code"] == OLD
    shutil.rmtree(run / "level_2")
    assert netgeom.cli.main(["read", str(run)]) == 2
    assert "is incomplete" in capsys.readouterr().err
    assert netgeom.cli.main(["read", str(run), "--partial"]) == 0
    assert "incomplete: levels 2..2" in capsys.readouterr().out
