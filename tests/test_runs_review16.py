"""Review 16: runs sharing a process are bit-identical to sequential ones (torch's thread count is set in
the thread that runs), run directories carry the code identity they were written with, the experiment
scripts' --scheduler runs on the cluster with absolute run directories, and a protected IMP config round
trips through its description."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from netgeom.pruning import IMP, IMPConfig, grid, run_sweep
from netgeom.training import TrainConfig, torch_threads

ROOT = Path(__file__).resolve().parent.parent

BASE = IMPConfig(
    model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10},
    data={"name": "digits", "seed": 0},
    train=TrainConfig(epochs=1, batch_size=64, lr=0.05),
    rounds=1,
)


def _fingerprint(results):
    out = []
    for r in results:
        for lv in r.levels:
            out.append((lv.level, lv.n_kept, lv.train_loss, lv.test_loss, lv.test_acc,
                        tuple((k, v.numpy().tobytes()) for k, v in sorted(lv.weights.items()))))
    return out


# ------------------------------------------------------------------ 2. thread count per thread
def test_torch_threads_sets_the_count_in_a_thread_that_already_ran_torch():
    """With OpenMP each thread keeps its own count: the second thread into a threads=1 block, which had run
    a torch op at 2 threads, used to keep 2 (only the first thread in called set_num_threads)."""
    torch.set_num_threads(2)  # new threads start from this count
    res, warm, first_in, done = {}, threading.Event(), threading.Event(), threading.Event()

    def first():
        warm.wait(20)
        with torch_threads(1):
            res["first"] = torch.get_num_threads()
            first_in.set()
            done.wait(20)

    def second():
        res["before"] = torch.get_num_threads()
        warm.set()
        first_in.wait(20)
        with torch_threads(1):
            res["inside"] = torch.get_num_threads()
        res["after"] = torch.get_num_threads()
        done.set()

    ts = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert res == {"before": 2, "first": 1, "inside": 1, "after": 2}
    assert torch.get_num_threads() == 2


_BARRIER = threading.Barrier(3)


def _touch_torch(_):
    _BARRIER.wait(30)  # all three worker threads at once: each runs a torch op at the process's count
    return torch.get_num_threads()


def test_in_process_backends_equal_sequential_bit_for_bit():
    """joblib 'threading' and a Dask LocalCluster(processes=False) whose threads already ran torch at 2
    threads: every run trains with threads=1 as recorded, so the results equal sequential ones exactly."""
    import distributed

    configs = grid(BASE, seed=[0, 1, 2])
    seq = _fingerprint(run_sweep(configs, backend="sequential", threads=1))
    torch.set_num_threads(2)
    assert _fingerprint(run_sweep(configs, n_jobs=3, backend="threading", threads=1)) == seq
    torch.set_num_threads(2)  # the count new threads start from (the pool's threads set theirs last)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=3, processes=False,
                                  dashboard_address=None) as cl, distributed.Client(cl) as c:
        assert c.gather([c.submit(_touch_torch, i, pure=False) for i in range(3)]) == [2, 2, 2]
        got = _fingerprint(run_sweep(configs, client=c))
    assert got == seq


# ------------------------------------------------------------------ 3, 4. experiments on a Dask cluster
@pytest.fixture
def experiments_common():
    sys.path.insert(0, str(ROOT))
    from experiments import _common as C

    n = torch.get_num_threads()
    yield C
    torch.set_num_threads(n)


def test_scheduler_runs_on_a_one_thread_cluster_and_checks_the_shared_dir(experiments_common, tmp_path):
    """A cluster of one worker thread: joblib's dask backend resolved n_jobs=-1 to one job and ran every
    unit in the caller. The output directory must be absolute and seen by every worker."""
    import distributed

    C = experiments_common
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cl:
        pids = C.parallel_map(os.getpid, [(), (), ()], scheduler=cl.scheduler_address)
        with distributed.Client(cl, set_as_default=False) as c:
            worker_pid = list(c.run(os.getpid).values())
        assert os.getpid() not in pids and set(pids) == set(worker_pid)
        assert C.parallel_map(os.getpid, [()], scheduler=cl.scheduler_address, shared=tmp_path) == pids[:1]
        with pytest.raises(ValueError, match="relative"):
            C.parallel_map(os.getpid, [()], scheduler=cl.scheduler_address, shared="runs")
        with pytest.raises(FileNotFoundError, match="every worker"):
            C.parallel_map(os.getpid, [()], scheduler=cl.scheduler_address, shared=tmp_path / "absent")


def test_relative_out_is_made_absolute_in_the_caller(experiments_common, tmp_path, monkeypatch):
    """--out relout with --scheduler: the workers, in their own working directories, wrote the run
    directories under theirs; the caller now hands them the absolute path."""
    C = experiments_common
    monkeypatch.chdir(tmp_path)
    args = C.parse(C.parser("demo", "demo", [0], [0]), ["--quick", "--out", "relout"])
    out = C.out_dir("demo", args)
    assert out.is_absolute() and out == tmp_path / "relout" and out.is_dir()


# ------------------------------------------------------------------ 5. a protected run's config round trips
def _keep_first_inputs(model, masks):
    keep = torch.zeros(16, 64, dtype=torch.bool)
    keep[:, :8] = True
    return {"0.weight": keep}


def test_protected_run_config_round_trips_through_from_dict(tmp_path):
    """IMPConfig.from_dict(result.config) of a run with protect= raised a raw TypeError (unexpected keyword
    'protect'); it now gives a config naming the callback, which rebuilds the same run directory."""
    res = IMP(BASE, out_dir=tmp_path, verbose=False, protect=_keep_first_inputs).run()
    name = res.config["protect"]
    assert name.endswith("test_runs_review16._keep_first_inputs")
    cfg = IMPConfig.from_dict(res.config)
    assert cfg.protect == name and cfg.to_dict() == res.config and cfg != BASE
    assert "protect" not in BASE.to_dict() and IMPConfig.from_dict(BASE.to_dict()) == BASE
    with pytest.raises(TypeError, match="protect='.*_keep_first_inputs'"):
        IMP(cfg, out_dir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="differs from config.protect"):
        IMP(cfg, verbose=False, protect=_keep_first_inputs, protect_name="other")
    again = IMP(cfg, out_dir=tmp_path, verbose=False, protect=_keep_first_inputs)
    assert again.run_dir.resumed and str(again.run_dir.path) == res.run_dir
    assert _fingerprint([again.run()]) == _fingerprint([res])
    with pytest.raises(TypeError, match="name of a protect callback"):
        IMPConfig(**{**BASE.__dict__, "protect": _keep_first_inputs})


# ------------------------------------------------------------------ 1. run directories record their code
def test_a_run_written_by_other_code_is_refused_naming_both_identities(tmp_path):
    """A run directory written by dirty code was resumed by clean code and reported as its result (f6): the
    directory now records the code identity, and reopening it with other code is refused."""
    import json

    res = IMP(BASE, out_dir=tmp_path, verbose=False).run()
    run = Path(res.run_dir)
    # the same code reopens it and reads the same levels back
    assert _fingerprint([IMP(BASE, out_dir=tmp_path, verbose=False).run()]) == _fingerprint([res])
    written = json.loads((run / "code.json").read_text()) if (run / "code.json").exists() else {}
    dirty = {**written, "sources": ["netgeom"], "sources_sha256": "d1e7" * 16, "git_commit": "c0ffee" * 6,
             "git_dirty": True}
    (run / "code.json").write_text(json.dumps(dirty))
    with pytest.raises(ValueError, match="written by other code") as err:
        IMP(BASE, out_dir=tmp_path, verbose=False).run()
    from netgeom.pruning import code_identity

    now = code_identity()
    assert written == now
    msg = str(err.value)
    assert "d1e7d1e7d1e7d1e7" in msg and now["sources_sha256"][:16] in msg and "uncommitted" in msg
    (run / "code.json").unlink()  # a run directory of netgeom before this change
    with pytest.raises(ValueError, match="records no code identity"):
        IMP(BASE, out_dir=tmp_path, verbose=False)


def test_code_identity_hashes_the_sources_wherever_they_lie(tmp_path):
    """Robust without git: a copy of netgeom's sources hashes like the package; another source differs."""
    import shutil

    from netgeom.pruning import code_identity
    from netgeom.pruning import runs as R

    shutil.copytree(R._PACKAGE, tmp_path / "netgeom", ignore=shutil.ignore_patterns("__pycache__"))
    assert R._sources_sha256((tmp_path / "netgeom",)) == code_identity()["sources_sha256"]
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "a" / "x" / "m.py").write_text("A = 1\n")
    (tmp_path / "b" / "x" / "m.py").write_text("A = 2\n")
    ia, ib = code_identity(tmp_path / "a" / "x"), code_identity(tmp_path / "b" / "x")
    assert ia["sources"] == ib["sources"] == ["netgeom", "x"] and ia["sources_sha256"] != ib["sources_sha256"]
    # outside the checkout netgeom lies in, the dirty state is unknown, never reported clean
    assert ia["git_dirty"] is None
    with pytest.raises(NotADirectoryError):
        code_identity(tmp_path / "absent")


def test_experiment_units_record_and_check_their_code(experiments_common, tmp_path):
    """The experiments' run directories record netgeom's and the scripts' sources; a unit computed by a
    worker on other code is refused, and results.json records the code the runs record."""
    from netgeom.pruning import RunDir

    C = experiments_common
    code = C.code_identity()
    assert code["sources"] == ["netgeom", "experiments"]
    RunDir(tmp_path, {"unit": 1}, code=code)
    with pytest.raises(ValueError, match="written by other code"):
        RunDir(tmp_path, {"unit": 1})  # netgeom's sources alone: not the code that wrote it
    assert C._same_code([(code["sources_sha256"], 5)]) == [5]
    with pytest.raises(RuntimeError, match="workers ran other code"):
        C._same_code([(code["sources_sha256"], 5), ("0" * 64, 6)])
    args = C.parse(C.parser("demo", "demo", [0], [0]), ["--quick"])
    assert C.describe("demo", args, {})["sources_sha256"] == code["sources_sha256"]
