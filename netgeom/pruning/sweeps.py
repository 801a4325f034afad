"""Sweeps: independent IMP runs (seeds x architectures x settings) executed through joblib.

Local processes by default (``backend="loky"``). On a cluster, use joblib's Dask or Ray backend -- no
scheduler of our own::

    from dask.distributed import Client
    import joblib
    client = Client("scheduler-address:8786")
    with joblib.parallel_backend("dask"):
        results = run_sweep(configs, out_dir="runs/sweep", n_jobs=-1, backend=None)

    # Ray: from ray.util.joblib import register_ray; register_ray()
    # with joblib.parallel_backend("ray"): run_sweep(configs, backend=None)

``backend=None`` uses whichever backend is active. With ``out_dir`` every run has its own hashed directory,
so an interrupted sweep simply resumes when called again.

>>> from netgeom.training import TrainConfig
>>> base = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
...                  data={"name": "digits", "seed": 0}, train=TrainConfig(epochs=1), rounds=1)
>>> [c.seed for c in grid(base, seed=[0, 1], q=[0.2, 0.5])]
[0, 0, 1, 1]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._validation import check_int
from .imp import IMP, IMPConfig, IMPResult

__all__ = ["run_sweep", "grid"]


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
            cfg = cfg.with_seed(v) if k == "seed" else dataclasses.replace(cfg, **{k: v})
        out.append(cfg)
    return out


def _run_one(config: IMPConfig, out_dir, device) -> IMPResult:
    return IMP(config, out_dir=out_dir, verbose=False, device=device).run()


def run_sweep(
    configs: Sequence[IMPConfig],
    out_dir: str | Path | None = None,
    n_jobs: int = 1,
    backend: str | None = "loky",
    device: str = "cpu",
) -> list[IMPResult]:
    """Run every config (in parallel through joblib) and return the results in the order given.

    ``protect`` callbacks are not supported here (they may not pickle); run :class:`IMP` directly for them.
    """
    from joblib import Parallel, delayed

    configs = list(configs)
    if not configs:
        raise ValueError("run_sweep needs at least one config")
    for i, c in enumerate(configs):
        if not isinstance(c, IMPConfig):
            raise TypeError(f"configs[{i}] must be an IMPConfig, got {type(c).__name__}")
    n_jobs = check_int(n_jobs, "n_jobs")
    if n_jobs == 0:
        raise ValueError("n_jobs must be a positive number of workers or negative (joblib convention), not 0")
    if n_jobs == 1:
        return [_run_one(c, out_dir, device) for c in configs]
    kw = {} if backend is None else {"backend": backend}
    return list(Parallel(n_jobs=n_jobs, **kw)(delayed(_run_one)(c, out_dir, device) for c in configs))
