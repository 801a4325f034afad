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
