"""Sweeps: independent IMP runs (seeds x architectures x settings), and analyses mapped over IMP levels, run
locally or on a Dask cluster -- no scheduler of our own.

- ``run_sweep(configs, n_jobs=4)``: local worker processes through joblib (``backend="loky"``; also
  ``"threading"``, ``"multiprocessing"``, or ``None`` for joblib's active backend, e.g. Ray's after
  ``ray.util.joblib.register_ray()`` and ``joblib.parallel_backend("ray")``).
- ``run_sweep(configs, out_dir="/shared/runs", scheduler="tcp://host:8786")`` (or ``client=Client(...)``, or
  ``backend="dask"`` with a default client): one Dask task per run on the cluster's workers, results
  gathered in the order given.
- ``map_levels(fn, result, backend=...)``: ``fn(model, masks=masks)`` on every IMP level of one or several
  results (intrinsic dimension, persistence, region counts per level), over the same backends.

Results are the same as a local, sequential run with the same torch thread count per run: every run is
seeded by its own description, and the thread count (which decides the rounding of every training step) is
fixed per run. ``threads="auto"`` means one thread per run when runs execute in parallel (the parallelism is
across runs) and :func:`~netgeom.training.choose_threads` one run at a time, which is also 1 below 2·10^9
multiply-adds per training step (every MLP and LeNet here); for larger models give ``threads=`` explicitly
to get the same results in both modes. With ``out_dir`` every run has its own hashed directory, which
records the run's thread count and device, so an interrupted sweep resumes when called again, in any
mode, bit-identically (``"auto"`` takes the recorded count); on a cluster ``out_dir`` must be a path every
worker sees (a shared file system): it is made absolute and checked on the workers before any run starts.

Within one worker *process*, concurrent runs (joblib ``"threading"``, a Dask worker with several threads,
``LocalCluster(processes=False)``) take turns per training epoch on torch's global RNG, so they are exact
but do not train in parallel; for parallel training use processes (Dask workers with ``nthreads=1``).

>>> from netgeom.training import TrainConfig
>>> base = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
...                  data={"name": "digits", "seed": 0}, train=TrainConfig(epochs=1), rounds=1)
>>> [c.seed for c in grid(base, seed=[0, 1], q=[0.2, 0.5])]
[0, 0, 1, 1]
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._validation import check_bool, check_int
from .imp import IMP, IMPConfig, IMPResult, read_run
from .runs import description_hash

__all__ = ["run_sweep", "read_sweep", "grid", "map_levels", "BACKENDS"]

BACKENDS = ("auto", "sequential", "loky", "threading", "multiprocessing", "dask", None)


def grid(base: IMPConfig, **axes: Sequence) -> list[IMPConfig]:
    """All combinations of the given IMPConfig fields (``seed=[0, 1, 2]``, ``model=[...]``, ``q=[...]``), in
    itertools.product order; ``seed`` goes through :meth:`IMPConfig.with_seed`."""
    if not isinstance(base, IMPConfig):
        raise TypeError(f"base must be an IMPConfig, got {type(base).__name__}")
    fields = {f.name for f in dataclasses.fields(IMPConfig)}
    for k, v in axes.items():
        if k not in fields:
            raise ValueError(f"unknown IMPConfig field {k!r}; fields: {sorted(fields)}")
        if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
            raise TypeError(f"axis {k!r} must be a list of values, got {v!r}")
    keys = list(axes)
    out = []
    for values in itertools.product(*(list(axes[k]) for k in keys)):
        cfg = base
        for k, v in zip(keys, values):
            if k == "seed":
                cfg = cfg.with_seed(v)
            elif k == "model":
                if not isinstance(v, Mapping) or "callable" in v:
                    raise TypeError("a model axis holds descriptions ({'name': ...} or {'factory': ...}); "
                                    "build configs of callables with IMPConfig(model=fn, model_name=...)")
                # a description replaces a callable base's model entirely
                cfg = dataclasses.replace(cfg, model=v, model_name=None, model_fn=None)
            else:
                cfg = dataclasses.replace(cfg, **{k: v})
        out.append(cfg)
    return out


# ---------------------------------------------------------------------- execution backends
@contextlib.contextmanager
def _dask_client(client, scheduler):
    try:
        import distributed
    except ImportError:
        raise ImportError("backend='dask' needs the 'distributed' package (pip install 'dask[distributed]')"
                          ) from None
    if client is not None and scheduler is not None:
        raise ValueError("give a Dask client= or a scheduler= address, not both")
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        yield client
        return
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise TypeError(f"scheduler must be an address such as 'tcp://host:8786', got {scheduler!r}")
        try:
            own = distributed.Client(scheduler, timeout=30, set_as_default=False)
        except OSError as exc:
            raise OSError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
        try:
            yield own
        finally:
            own.close()
        return
    try:
        yield distributed.default_client()
    except ValueError:
        raise ValueError("backend='dask' without a client: pass client=Client(...) or scheduler='tcp://...', "
                         "or create a distributed.Client first (it becomes the default)") from None


def _resolve_backend(backend, n_jobs, client, scheduler) -> tuple[Any, int]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    remote = client is not None or scheduler is not None
    if backend == "auto":
        backend = "dask" if remote else ("loky" if n_jobs not in (None, 1) else "sequential")
    if remote and backend != "dask":
        raise ValueError(f"client=/scheduler= run on Dask; they do not go with backend={backend!r}")
    if backend == "dask":
        if n_jobs is not None:
            raise ValueError("n_jobs is for local backends; on Dask the runs spread over the cluster's "
                             "workers (leave n_jobs out)")
        return backend, 0
    n_jobs = 1 if n_jobs is None else check_int(n_jobs, "n_jobs")
    if n_jobs == 0:
        raise ValueError("n_jobs must be a positive number of workers or negative (joblib convention), not 0")
    if backend == "sequential" and n_jobs != 1:
        raise ValueError(f"backend='sequential' runs one task at a time; n_jobs={n_jobs} contradicts it")
    return backend, n_jobs


def _execute(func: Callable, tasks: list[tuple], backend, n_jobs: int, client, scheduler) -> list:
    """``[func(*args) for args in tasks]`` on the backend, in order."""
    if backend == "dask":
        with _dask_client(client, scheduler) as c:
            # pure=False: a task is an experiment with side effects (its run directory), never deduplicated
            futures = [c.submit(func, *args, pure=False) for args in tasks]
            return c.gather(futures)
    if backend == "sequential" or n_jobs == 1:
        return [func(*args) for args in tasks]
    from joblib import Parallel, delayed

    kw = {} if backend is None else {"backend": backend}
    return list(Parallel(n_jobs=n_jobs, **kw)(delayed(func)(*args) for args in tasks))


def _parallel(backend, n_jobs) -> bool:
    return backend == "dask" or n_jobs != 1


def _check_shared_dir(path: Path, client, scheduler, what: str = "out_dir") -> None:
    """Every Dask worker must see the run directories' root, or runs would land on one machine's disk
    (``what``: the argument's name in the message)."""
    with _dask_client(client, scheduler) as c:
        seen = c.run(os.path.isdir, str(path))
    missing = sorted(w for w, ok in seen.items() if not ok)
    if missing:
        raise FileNotFoundError(
            f"{what} {str(path)!r} does not exist on Dask worker(s) {missing}: run directories must be on a "
            "path every worker sees (a shared file system)"
        )


# ---------------------------------------------------------------------- sweeps
def _run_one(config: IMPConfig, out_dir, device, threads) -> IMPResult:
    return IMP(config, out_dir=out_dir, verbose=False, device=device, threads=threads).run()


def run_sweep(
    configs: Sequence[IMPConfig],
    out_dir: str | Path | None = None,
    n_jobs: int | None = None,
    backend: str | None = "auto",
    device: str = "cpu",
    *,
    threads: int | str | None = "auto",
    client=None,
    scheduler: str | None = None,
) -> list[IMPResult]:
    """Run every config and return the results in the order given (see the module docstring).

    ``backend``: ``"auto"`` (default: Dask when ``client``/``scheduler`` is given, joblib's ``"loky"``
    processes when ``n_jobs`` > 1, else one after another), ``"sequential"``, ``"loky"``, ``"threading"``,
    ``"multiprocessing"``, ``None`` (joblib's active backend) or ``"dask"`` (``client``, ``scheduler``
    address, or the default client). ``threads``: torch threads per run; ``"auto"`` is
    :func:`~netgeom.training.choose_threads` for one run at a time and 1 when runs execute in parallel.

    ``protect`` callbacks are not supported here (they may not pickle); run :class:`IMP` directly for them.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("run_sweep needs at least one config")
    for i, c in enumerate(configs):
        if not isinstance(c, IMPConfig):
            raise TypeError(f"configs[{i}] must be an IMPConfig, got {type(c).__name__}")
    backend, n_jobs = _resolve_backend(backend, n_jobs, client, scheduler)
    if threads == "auto" and _parallel(backend, n_jobs):
        threads = 1
    if out_dir is not None:
        # absolute: a worker's working directory is not the caller's
        out_dir = Path(out_dir).expanduser().resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        if backend == "dask":
            _check_shared_dir(out_dir, client, scheduler)
        out_dir = str(out_dir)
    tasks = [(c, out_dir, device, threads) for c in configs]
    return _execute(_run_one, tasks, backend, n_jobs, client, scheduler)


def read_sweep(configs: Sequence[IMPConfig], out_dir: str | Path, *, partial: bool = False,
               code: Mapping[str, Any] | None = None) -> list[IMPResult]:
    """The results of a sweep :func:`run_sweep` wrote into ``out_dir``, read back read-only with
    :func:`~netgeom.pruning.imp.read_run` (in the order given; nothing is computed, created or written), each
    with the code identity its run directory records (``code``, ``code_note``): the way to look at a sweep
    computed by another version of netgeom, which ``run_sweep`` refuses to reopen. A config without a run
    directory raises ``FileNotFoundError`` naming it; ``partial`` and ``code`` are :func:`read_run`'s
    (unfinished runs raise :class:`~netgeom.pruning.runs.IncompleteRunError` unless ``partial`` is ``True``).
    """
    check_bool(partial, "partial")
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, IMPConfig):
            raise TypeError(f"configs[{i}] must be an IMPConfig, got {type(c).__name__}")
    root = Path(out_dir).expanduser()
    out = []
    for i, c in enumerate(configs):
        path = root / f"imp-{description_hash(c.to_dict())}"  # where IMP(c, out_dir=root) runs it
        if not path.exists():
            raise FileNotFoundError(f"configs[{i}] has no run directory in {root} (no {path.name}): the "
                                    "sweep has not run it there")
        out.append(read_run(path, partial=partial, model_fn=c.model_fn, code=code))
    return out


# ---------------------------------------------------------------------- analyses over levels
def _apply(fn, model, masks):
    return fn(model, masks=masks)


def map_levels(
    fn: Callable[[Any, Any], Any],
    result: IMPResult | Sequence[IMPResult],
    *,
    levels: Sequence[int] | None = None,
    backend: str | None = "auto",
    n_jobs: int | None = None,
    client=None,
    scheduler: str | None = None,
) -> list:
    """``fn(model, masks=masks)`` for every IMP level (or the ``levels`` given) of ``result``: the level's
    trained, masked network (:meth:`IMPResult.model_at`, eval mode) and its :class:`Masks`, on the same
    backends as :func:`run_sweep`. Returns the values in level order; for a list of results, one such list
    per result. netgeom's analyses fit as they are or through ``functools.partial``:
    ``map_levels(neural_persistence, res)``, ``map_levels(partial(count_patterns, X=X), res)``,
    ``map_levels(partial(representation_dimension, X=X), res, client=client)``.

    ``fn`` must be picklable for process and Dask backends (a module-level function or a ``partial`` of
    one).

    >>> from netgeom.training import TrainConfig
    >>> cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
    ...                 data={"name": "digits"}, train=TrainConfig(epochs=1), rounds=2)
    >>> res = IMP(cfg, verbose=False).run()
    >>> [round(d, 2) for d in map_levels(lambda model, masks: masks.density(), res)]
    [1.0, 0.8, 0.64]
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(model, masks), got {type(fn).__name__}")
    single = isinstance(result, IMPResult)
    results = [result] if single else list(result)
    if not results:
        raise ValueError("map_levels needs at least one IMPResult")
    for i, r in enumerate(results):
        if not isinstance(r, IMPResult):
            raise TypeError(f"result[{i}] must be an IMPResult, got {type(r).__name__}")
    backend, n_jobs = _resolve_backend(backend, n_jobs, client, scheduler)
    tasks, sizes = [], []
    for r in results:
        want = range(len(r.levels)) if levels is None else levels
        chosen = [r._level(lv).level for lv in want]
        sizes.append(len(chosen))
        tasks += [(fn, r.model_at(lv), r.masks_at(lv)) for lv in chosen]
    flat = _execute(_apply, tasks, backend, n_jobs, client, scheduler)
    out, i = [], 0
    for n in sizes:
        out.append(flat[i : i + n])
        i += n
    return out[0] if single else out
