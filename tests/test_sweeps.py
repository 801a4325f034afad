"""Sweeps and per-level analyses on every backend: sequential, joblib, and a Dask LocalCluster -- the same
results bit for bit, run directories on the shared path."""

import functools

import pytest
import torch

from netgeom.pruning import IMP, IMPConfig, grid, map_levels, run_sweep
from netgeom.regions import count_patterns
from netgeom.topology import neural_persistence
from netgeom.training import TrainConfig

BASE = IMPConfig(
    model={"name": "mlp", "n_in": 64, "widths": [12], "n_out": 10},
    data={"name": "digits", "seed": 0},
    train=TrainConfig(epochs=1, batch_size=64, lr=0.05),
    rounds=2,
)


def same(a, b):
    assert a.config == b.config and len(a.levels) == len(b.levels)
    for la, lb in zip(a.levels, b.levels):
        assert la.masks.equals(lb.masks)
        assert (la.train_loss, la.test_loss, la.test_acc) == (lb.train_loss, lb.test_loss, lb.test_acc)
        for k in la.weights:
            assert torch.equal(la.weights[k], lb.weights[k])


@pytest.fixture(scope="module")
def client():
    import distributed
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=":0")
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


def _density(model, masks):
    return masks.density()


def test_dask_sweep_equals_local_run(tmp_path, client):
    configs = grid(BASE, seed=[0, 1], q=[0.5])
    local = run_sweep(configs)
    remote = run_sweep(configs, out_dir=tmp_path / "runs", client=client)
    for a, b in zip(local, remote):
        same(a, b)
    assert [r.config["seed"] for r in remote] == [0, 1]
    # one hashed run directory per config on the shared path, each complete; a repeat reloads them
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2 and {r.run_dir for r in remote} == {str(d) for d in dirs}
    records = sorted((tmp_path / "runs").rglob("record.json"))
    assert len(records) == 6
    stamps = [p.stat().st_mtime_ns for p in records]
    again = run_sweep(configs, out_dir=tmp_path / "runs", client=client)
    for a, b in zip(remote, again):
        same(a, b)
    assert [p.stat().st_mtime_ns for p in records] == stamps  # reloaded, not retrained
    # per-level analyses map over the cluster too: same values as locally, in level order
    fn = functools.partial(neural_persistence)
    here = map_levels(fn, local[:2])
    there = map_levels(fn, remote[:2], client=client)
    assert [[r.to_dict() for r in rs] for rs in here] == [[r.to_dict() for r in rs] for rs in there]
    assert map_levels(_density, remote[0], client=client) == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)
    assert map_levels(_density, remote[0], levels=[-1], backend="threading", n_jobs=2) == pytest.approx(
        [0.25], abs=1e-3)
    # analyses that take data go through functools.partial, masks by keyword
    X = torch.rand(200, 64)
    counts = map_levels(functools.partial(count_patterns, X=X), remote[0], backend="threading", n_jobs=2)
    assert [c.count for c in counts] == [
        count_patterns(remote[0].model_at(r), X, masks=remote[0].masks_at(r)).count for r in range(3)]


def test_dask_default_client_and_scheduler_address(tmp_path, client):
    configs = grid(BASE.with_seed(2), q=[0.3])
    ref = IMP(configs[0], verbose=False).run()
    (by_address,) = run_sweep(configs, scheduler=client.scheduler.address)
    same(by_address, ref)
    with client.as_current():
        (by_default,) = run_sweep(configs, backend="dask")
    same(by_default, ref)


def test_dask_worker_processes_ship_results_back_exactly(tmp_path):
    """Real worker processes: configs, results (tensors, Masks) and run directories cross process borders."""
    import distributed
    config = IMPConfig(**{**BASE.__dict__, "rounds": 1})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        (res,) = run_sweep([config], out_dir=tmp_path, client=c)
    same(res, IMP(config, verbose=False).run())
    assert res.masks_at(1).equals(IMP(config, out_dir=tmp_path, verbose=False).run().masks_at(1))


def test_threading_sweep_runs_concurrently_and_exactly():
    # two runs in threads of one process share torch's global RNG: they must still match sequential runs
    configs = grid(BASE, seed=[0, 1, 2])
    for a, b in zip(run_sweep(configs), run_sweep(configs, n_jobs=3, backend="threading")):
        same(a, b)


def test_backend_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        run_sweep([BASE], backend="spark")
    with pytest.raises(ValueError, match="n_jobs is for local backends"):
        run_sweep([BASE], backend="dask", n_jobs=2)
    with pytest.raises(ValueError, match="do not go with backend='loky'"):
        run_sweep([BASE], backend="loky", scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="contradicts"):
        run_sweep([BASE], backend="sequential", n_jobs=2)
    with pytest.raises(ValueError, match="without a client"):
        run_sweep([BASE], backend="dask")
    with pytest.raises(TypeError, match="IMPResult"):
        map_levels(_density, [object()])
    with pytest.raises(TypeError, match="callable"):
        map_levels(3, [])


def test_relative_out_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (res,) = run_sweep([BASE], out_dir="rel")
    assert res.run_dir.startswith(str(tmp_path / "rel"))


def test_grid_over_models_from_a_callable_base():
    from tests._user_models import tiny_resnet

    base = IMPConfig(model=tiny_resnet, model_name="tiny", data=BASE.data, train=BASE.train)
    a, b = grid(base, model=[{"factory": "tests._user_models:tiny_resnet", "width": 3}, BASE.model])
    assert a.model == {"factory": "tests._user_models:tiny_resnet", "width": 3} and a.model_fn is None
    assert b.model["name"] == "mlp"
    assert grid(base, seed=[1])[0].model_fn is tiny_resnet
    with pytest.raises(TypeError, match="model axis"):
        grid(base, model=[tiny_resnet])
