import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from netgeom.data.datasets import load_digits
from netgeom.pruning import IMP, IMPConfig, RunDir, description_hash, grid, run_sweep
from netgeom.training import TrainConfig

CFG = IMPConfig(
    model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10},
    data={"name": "digits", "seed": 0},
    train=TrainConfig(epochs=3, batch_size=64, lr=0.05, schedule="cosine"),
    rounds=2,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def same(a, b):
    assert len(a.levels) == len(b.levels)
    for la, lb in zip(a.levels, b.levels):
        assert la.masks.equals(lb.masks)
        assert (la.train_acc, la.test_acc, la.train_loss, la.test_loss) == (
            lb.train_acc, lb.test_acc, lb.train_loss, lb.test_loss,
        )
        for k in la.weights:
            assert torch.equal(la.weights[k], lb.weights[k])


def test_hash_names_the_directory(tmp_path):
    d = {"b": [1, 2], "a": {"x": 1.5}}
    r = RunDir(tmp_path, d, prefix="t")
    assert r.path.name == f"t-{description_hash({'a': {'x': 1.5}, 'b': [1, 2]})}"
    assert json.loads((r.path / "description.json").read_text()) == d
    assert "\n" in (r.path / "description.json").read_text()  # human-readable, indented
    assert description_hash({"a": 1}) != description_hash({"a": 2})
    assert RunDir(tmp_path, d, prefix="t").resumed
    with pytest.raises(TypeError, match="JSON"):
        RunDir(tmp_path, {"a": object()})


def test_other_description_under_same_name_is_an_error(tmp_path):
    r = RunDir(tmp_path, {"a": 1})
    (r.path / "description.json").write_text(json.dumps({"a": 2}))
    with pytest.raises(FileExistsError, match="different description"):
        RunDir(tmp_path, {"a": 1})
    os.remove(r.path / "description.json")
    with pytest.raises(FileExistsError, match="not a netgeom run"):
        RunDir(tmp_path, {"a": 1})


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "rewind,stop_level", [(("epoch", 1), 0), ("init", 1), ("lr", 2), (("iteration", 30), 0)]
)
def test_interrupted_run_resumes_to_the_same_result(tmp_path, digits, rewind, stop_level):
    config = IMPConfig(**{**CFG.__dict__, "rewind": rewind})
    ref = IMP(config, verbose=False, data=digits).run()

    steps_per_epoch = 22

    def stop(level, event, tr):
        # in the middle of epoch 3, after two epoch checkpoints
        if level == stop_level and event == "step" and tr.step == 2 * steps_per_epoch + 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        IMP(config, out_dir=tmp_path, verbose=False, data=digits, callback=stop).run()
    run_dir = next(tmp_path.iterdir())
    assert (run_dir / f"level_{stop_level}" / "trainer.pt").exists()
    assert not (run_dir / f"level_{stop_level}" / "record.json").exists()
    assert not list(run_dir.rglob("*.tmp"))

    resumed_from = []

    def watch(level, event, tr):
        if event == "epoch":
            resumed_from.append((level, tr.epoch))

    res = IMP(config, out_dir=tmp_path, verbose=False, data=digits, callback=watch).run()
    assert resumed_from[0] == (stop_level, 3)  # epochs 1-2 of the interrupted level were not redone
    same(res, ref)
    assert len(list(tmp_path.iterdir())) == 1


def test_completed_run_is_reloaded_never_overwritten(tmp_path, digits):
    first = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run()
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    events = []
    again = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, callback=lambda *a: events.append(a)).run()
    assert events == []  # nothing retrained
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()} == files
    same(first, again)
    assert again.levels[1].weights_path and os.path.exists(again.levels[1].weights_path)
    assert not list(tmp_path.rglob("trainer.pt"))  # per-epoch checkpoints are dropped once a level completes


def test_killed_subprocess_resumes(tmp_path, digits):
    """A real kill (SIGKILL from inside, mid-epoch, no Python cleanup) leaves a resumable directory."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from netgeom.pruning import IMP, IMPConfig
        from netgeom.training import TrainConfig
        import json
        cfg = IMPConfig.from_dict(json.loads({json.dumps(CFG.to_dict())!r}))
        def kill(level, event, tr):
            if level == 1 and event == "step" and tr.step == 50:
                os.kill(os.getpid(), signal.SIGKILL)
        IMP(cfg, out_dir={str(tmp_path)!r}, verbose=False, callback=kill).run()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    res = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run()
    same(res, IMP(CFG, verbose=False, data=digits).run())


def test_sweep_matches_single_runs(tmp_path, digits):
    base = IMPConfig(**{**CFG.__dict__, "rounds": 1, "train": CFG.train.replace(epochs=1)})
    configs = grid(base, seed=[0, 1])
    seq = run_sweep(configs, out_dir=tmp_path, n_jobs=1)
    par = run_sweep(configs, n_jobs=2, backend="threading")
    for a, b in zip(seq, par):
        same(a, b)
    assert [r.config["seed"] for r in seq] == [0, 1]
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="at least one"):
        run_sweep([])
    with pytest.raises(TypeError, match="IMPConfig"):
        run_sweep([{"model": 1}])
    with pytest.raises(ValueError, match="unknown IMPConfig field"):
        grid(CFG, lr=[0.1])


def _keep_first_inputs(model, masks):
    keep = torch.zeros(16, 64, dtype=torch.bool)
    keep[:, :8] = True
    return {"0.weight": keep}


def test_protect_callback_is_part_of_the_run_description(tmp_path, digits):
    """A protected run must not reload a plain run's levels (or the reverse) from the same root."""
    config = IMPConfig(**{**CFG.__dict__, "q": 0.5, "train": CFG.train.replace(epochs=1)})
    plain = IMP(config, out_dir=tmp_path, verbose=False, data=digits).run()
    prot = IMP(config, out_dir=tmp_path, verbose=False, data=digits, protect=_keep_first_inputs).run()
    assert prot.run_dir != plain.run_dir and len(list(tmp_path.iterdir())) == 2
    assert prot.config["protect"].endswith("test_runs._keep_first_inputs") and "protect" not in plain.config
    assert prot.levels[2].masks["0.weight"][:, :8].all()
    assert not plain.levels[2].masks.equals(prot.levels[2].masks)
    same(prot, IMP(config, verbose=False, data=digits, protect=_keep_first_inputs).run())
    # a lambda has no stable name: refused with a run directory, accepted with an explicit name
    with pytest.raises(ValueError, match="protect_name"):
        IMP(config, out_dir=tmp_path, verbose=False, protect=lambda m, k: {})
    named = IMP(config, out_dir=tmp_path, verbose=False, protect=lambda m, k: {}, protect_name="none")
    assert named.run_dir.description["protect"] == "none"
    with pytest.raises(ValueError, match="without a protect"):
        IMP(config, protect_name="x")


def test_run_directory_never_exists_without_its_description(tmp_path, monkeypatch):
    """A kill while the description is written must not leave a directory that cannot be reopened."""
    from netgeom.pruning import runs

    real = runs.atomic_write_bytes

    def killed(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        RunDir(tmp_path, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # neither the run directory nor a temporary one is left
    monkeypatch.setattr(runs, "atomic_write_bytes", real)
    r = RunDir(tmp_path, {"a": 1})
    assert not r.resumed and json.loads((r.path / "description.json").read_text()) == {"a": 1}
    assert oct(r.path.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    # another process creating the same directory first: this one reopens it instead of failing
    monkeypatch.setattr(runs.os, "rename", lambda a, b: (_ for _ in ()).throw(OSError("exists")))
    r2 = RunDir(tmp_path, {"a": 1})
    assert r2.resumed and r2.path == r.path and len(list(tmp_path.iterdir())) == 1


def _umask():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask")).split()[1], 8)


def test_checkpoints_are_synced_before_the_rename(tmp_path, monkeypatch):
    from netgeom.pruning import runs

    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(runs.os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(runs.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    path = runs.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert order == ["fsync", "replace"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resuming_with_other_data_is_refused(tmp_path, digits):
    IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run()
    other = load_digits(seed=1)  # same description name, different split
    with pytest.raises(ValueError, match="data differ from the data run"):
        IMP(CFG, out_dir=tmp_path, verbose=False, data=other).run()
    # the run it refused is intact and still reloads
    again = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run()
    assert len(again.levels) == CFG.rounds + 1


# ------------------------------------------------------------------------------ locks, corruption, modes
_RUN_SCRIPT = """
import hashlib, json, sys, warnings, torch
torch.set_num_threads(1)
from netgeom.pruning import IMP, IMPConfig
cfg = IMPConfig.from_dict(json.loads(sys.argv[1]))
show = warnings.showwarning
def note(message, *args, **kw):
    if "is in use by" in str(message):
        open(sys.argv[3], "w").close()  # this process found the run locked and waits for it
    show(message, *args, **kw)
warnings.showwarning = note
def cb(level, event, tr):
    if event == "start":
        open(sys.argv[3] + ".trained", "w").close()
res = IMP(cfg, out_dir=sys.argv[2], verbose=False, callback=cb).run()
print(json.dumps([[lv.level, lv.test_acc, lv.train_loss,
                   hashlib.sha256(b"".join(v.numpy().tobytes() for v in lv.weights.values())).hexdigest()]
                  for lv in res.levels]))
"""


def test_two_processes_on_one_run_do_the_work_once_and_agree(tmp_path, digits):
    """This process holds the run; a second real process started meanwhile waits, then reads the results."""
    import hashlib
    import time as _time

    waiting = tmp_path / "waiting"
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    other = []

    def start_other_and_wait(level, event, tr):
        if level == 0 and event == "start":  # the lock is held from here on
            argv = [sys.executable, "-c", _RUN_SCRIPT, json.dumps(CFG.to_dict()), str(tmp_path / "out"),
                    str(waiting)]
            other.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
            t0 = _time.time()
            while not waiting.exists() and other[0].poll() is None and _time.time() - t0 < 120:
                _time.sleep(0.02)

    mine = IMP(CFG, out_dir=tmp_path / "out", verbose=False, data=digits, callback=start_other_and_wait).run()
    out, err = other[0].communicate(timeout=120)
    assert other[0].returncode == 0, err.decode()[-3000:]
    assert f"is in use by process {os.getpid()}" in err.decode()  # it waited for this process
    assert waiting.exists() and not (tmp_path / "waiting.trained").exists()  # ... and never trained
    digest = [hashlib.sha256(b"".join(v.numpy().tobytes() for v in lv.weights.values())).hexdigest()
              for lv in mine.levels]
    expected = [[lv.level, lv.test_acc, lv.train_loss, h] for lv, h in zip(mine.levels, digest)]
    assert json.loads(out) == expected
    same(mine, IMP(CFG, verbose=False, data=digits).run())  # identical to a run without a directory


def test_lock_refuses_with_the_owner_when_asked_not_to_wait(tmp_path):
    from netgeom.pruning.runs import RunInUseError

    a, b = RunDir(tmp_path, {"x": 1}), RunDir(tmp_path, {"x": 1})
    with a.lock():
        with pytest.raises(RunInUseError, match=f"run .*run-{a.hash} is in use by process {os.getpid()}"):
            with b.lock(timeout=0):
                pass
        waits = pytest.warns(UserWarning, match="in use by process")
        with waits, pytest.raises(RunInUseError, match="waited"):
            with b.lock(timeout=0.2):
                pass
    with b.lock(timeout=0):  # released
        pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("template")
    # module fixtures are set up before conftest's one-thread fixture; training results depend on threads
    res = IMP(CFG, out_dir=root, verbose=False, data=digits, num_threads=1).run()
    return root, res


def _corrupt_npz(path, **arrays):
    import numpy as np

    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _pickle_payload(path):
    class P:
        def __reduce__(self):
            return (os.system, (f"touch {path}.pwned",))

    torch.save({"0.weight": P()}, path)


CORRUPTIONS = {
    "record truncated": ("level_1/record.json", lambda p: p.write_text(p.read_text()[:40]), "not valid JSON"),
    "record not utf8": ("level_1/record.json", lambda p: p.write_bytes(b"\xff\xfe{}"), "not valid JSON"),
    "record string accuracy": (
        "level_1/record.json",
        lambda p: p.write_text(p.read_text().replace('"test_acc": ', '"test_acc": "0.9", "x": ', 1)),
        "unexpected keys|must be a number",
    ),
    "record accuracy 1.5": (
        "level_1/record.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "test_acc": 1.5})),
        r"test_acc = 1.5 is not in \[0, 1\]",
    ),
    "record wrong level": (
        "level_1/record.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "level": 2})),
        "records level 2",
    ),
    "record missing key": (
        "level_1/record.json",
        lambda p: p.write_text(
            json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k[0] != "s"})
        ),
        r"lacks \['seed', 'sparsity'\]",
    ),
    "record n_kept": (
        "level_1/record.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "n_kept": 3})),
        "n_kept 3 but masks.npz keeps",
    ),
    "history list of strings": (
        "level_1/record.json",
        lambda p: p.write_text(p.read_text().replace('"lr": [', '"lr": ["a", ', 1)),
        r"history.lr\[0\] must be a number",
    ),
    "masks garbage": ("level_1/masks.npz", lambda p: p.write_bytes(b"garbage" * 20), "not a readable masks"),
    "masks truncated": ("level_1/masks.npz", lambda p: p.write_bytes(p.read_bytes()[:60]), "masks file"),
    "masks object array": (
        "level_1/masks.npz",
        lambda p: _corrupt_npz(p, **{"0.weight": __import__("numpy").array([None, 1], dtype=object)}),
        "pickled Python objects",
    ),
    "masks wrong shape": (
        "level_1/masks.npz",
        lambda p: _corrupt_npz(p, **{"0.weight": __import__("numpy").ones((3, 3), bool)}),
        r"mask '0.weight' has shape \(3, 3\)",
    ),
    "masks values 2": (
        "level_1/masks.npz",
        lambda p: _corrupt_npz(p, **{"0.weight": 2 * __import__("numpy").ones((16, 64), "int8")}),
        "must be boolean",
    ),
    "masks bias key": (
        "level_1/masks.npz",
        lambda p: _corrupt_npz(p, **{"0.bias": __import__("numpy").ones(16, bool)}),
        "names a bias",
    ),
    "weights garbage": ("level_1/weights.pt", lambda p: p.write_bytes(b"garbage" * 20), "level_1/weights.pt"),
    "weights truncated": ("level_1/weights.pt", lambda p: p.write_bytes(p.read_bytes()[:100]), "weights.pt"),
    "weights pickle payload": ("level_1/weights.pt", _pickle_payload, "GLOBAL posix.system"),
    "weights wrong shape": (
        "level_1/weights.pt",
        lambda p: torch.save({**torch.load(p), "0.weight": torch.zeros(2, 2)}, p),
        r"'0.weight' has shape \(2, 2\)",
    ),
    "weights missing tensor": (
        "level_1/weights.pt",
        lambda p: torch.save({k: v for k, v in torch.load(p).items() if k != "0.bias"}, p),
        r"missing \['0.bias'\]",
    ),
    "weights nan": (
        "level_1/weights.pt",
        lambda p: torch.save({**torch.load(p), "0.bias": torch.full((16,), float("nan"))}, p),
        "NaN or inf",
    ),
    "fingerprint truncated": ("data_fingerprint.json", lambda p: p.write_text("{"), "not valid JSON"),
    "fingerprint types": (
        "data_fingerprint.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "n_train": "1347"})),
        "n_train must be an integer",
    ),
    "numerics types": (
        "numerics.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "threads": "1"})),
        "threads must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_run_files_are_named_with_the_recovery(tmp_path, finished_run, digits, case):
    import shutil

    from netgeom.pruning.runs import CorruptRunFileError

    template, reference = finished_run
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    name, damage, reason = CORRUPTIONS[case]
    (run,) = tmp_path.glob("imp-*")
    damage(run / name)
    with pytest.raises(CorruptRunFileError, match=reason) as err:
        IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run()
    msg = str(err.value)
    assert msg.startswith(f"{run / name} is corrupt (")
    assert "weights_only" not in msg and "allow_pickle" not in msg and "\n" not in msg
    assert not list(tmp_path.rglob("*.pwned"))
    # following the advice recovers the same result
    if name.startswith("level_1/"):
        assert msg.endswith(f"delete {run / 'level_1'} to recompute that level")
        shutil.rmtree(run / "level_1")
    else:
        numerics = name == "numerics.json"
        what = "the current threads and device" if numerics else "the fingerprint of the current data"
        assert msg.endswith(f"delete {run / name} to record {what} again")
        (run / name).unlink()
    same(IMP(CFG, out_dir=tmp_path, verbose=False, data=digits).run(), reference)


def test_corrupt_description_is_named(tmp_path):
    from netgeom.pruning.runs import CorruptRunFileError

    run = RunDir(tmp_path, {"x": 1})
    run.file("description.json").write_text('{"x": ')
    with pytest.raises(CorruptRunFileError, match="description.json is corrupt .*delete it to start"):
        RunDir(tmp_path, {"x": 1})


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        run = RunDir(tmp_path, {"x": 1})
        run.save_json("a.json", {"a": 1})
        run.save_tensors("t.pt", {"a": torch.ones(2)})
        from netgeom.pruning import Masks

        run.save_masks("m.npz", Masks({"w": torch.ones(2, dtype=torch.bool)}))
        modes = {p.name: p.stat().st_mode & 0o777 for p in run.path.iterdir()}
        names = ("description.json", "code.json", "a.json", "t.pt", "m.npz")
        assert modes == dict.fromkeys(names, 0o640)
        assert run.path.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


def test_unwritable_output_directory_is_named(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match=f"output directory {f} exists but is a file"):
        RunDir(f, {"x": 1})


def test_read_only_output_directory_is_named(tmp_path, monkeypatch):
    # root ignores directory modes, so the refusal of a read-only file system is simulated where RunDir
    # creates directories: the same errno and the same path as a real EACCES/EROFS
    import errno
    import pathlib

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=f"cannot create the run directory {tmp_path}/ro/run-.*"
                       r"\(Permission denied\); choose a writable output directory"):
        RunDir(tmp_path / "ro", {"x": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, -float("inf")], {"a": float("nan")}])
def test_description_with_non_finite_numbers_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="non-finite number .* at 'lr"):
        RunDir(tmp_path, {"lr": value})
    assert not list(tmp_path.iterdir())


def test_model_at_reads_a_checked_weights_file(tmp_path, finished_run):
    import shutil

    from netgeom.pruning import IMPResult
    from netgeom.pruning.runs import CorruptRunFileError

    template, reference = finished_run
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    (run,) = tmp_path.glob("imp-*")
    levels = [lv.__class__(**{**lv.__dict__, "weights": None,
                              "weights_path": str(run / f"level_{lv.level}" / "weights.pt")})
              for lv in reference.levels]
    res = IMPResult(config=reference.config, levels=levels, run_dir=str(run))
    assert torch.equal(res.model_at(1)[0].weight, reference.model_at(1)[0].weight)
    (run / "level_1" / "weights.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CorruptRunFileError, match=f"{run / 'level_1' / 'weights.pt'} is corrupt .*delete "
                       f"{run / 'level_1'} to recompute that level") as err:
        res.model_at(1)
    assert "weights_only" not in str(err.value)


def test_a_run_that_cannot_be_locked_for_lack_of_write_access_is_read_without_a_lock(tmp_path, monkeypatch):
    import errno

    import filelock

    run = RunDir(tmp_path, {"x": 1})

    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    with pytest.warns(UserWarning, match="is not writable .*reading it without a lock"):
        with run.lock():
            assert run.load_json("description.json") == {"x": 1}
