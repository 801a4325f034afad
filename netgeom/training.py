"""A fast CPU trainer on whole tensors, with masks kept exact through training.

The experiment (``TrainConfig``, frozen and JSON-able) is kept apart from its execution (``Trainer`` /
``train``). Minibatches are index slices of a per-epoch permutation drawn from a ``torch.Generator`` seeded by
``(seed, epoch)``, so any epoch's data order can be recomputed without stored RNG state: this is what makes a
resumed run (``Trainer.load_state_dict``) and weight rewinding to iteration ``k`` exact.

The learning rate is a pure function of the global step (:func:`lr_at`), so the whole scheduler state is the
step counter; learning-rate rewinding is simply a new ``Trainer`` starting at step 0.

>>> from netgeom.nets import mlp
>>> from netgeom.data.datasets import load_digits
>>> data = load_digits(seed=0)
>>> hist = train(mlp(64, [32], 10, seed=0), data, TrainConfig(epochs=2, lr=0.05), verbose=False)
>>> len(hist.test_acc)
2

**Input-shape rule.** A model built by netgeom carries ``model.input_shape`` (one sample's shape). When a data
set's per-sample shape differs from it but holds the same number of features (MNIST loads as ``(1, 28, 28)``,
LeNet-300-100 expects ``(784,)``; MNIST-1D loads as ``(40,)``, ``small_convnet`` expects ``(1, 40)``),
:func:`train`, :class:`Trainer` and :func:`evaluate` view every sample in the model's shape (a reshape of the
same numbers, row-major, nothing copied or reordered). When the feature counts differ they raise a ValueError
naming both shapes. Models without ``input_shape`` get the data as they are. See :func:`conform_inputs`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ._seeding import _GLOBAL_RNG_LOCK
from ._validation import (
    available_memory,
    check_bool,
    check_choice,
    check_device,
    check_finite_model,
    check_fraction,
    check_int,
    check_tensor,
)
from .results import Result, new_axes

__all__ = [
    "TrainConfig", "TrainHistory", "Trainer", "TrainingData", "DataSplit", "train", "evaluate", "lr_at",
    "conform_inputs", "OPTIMIZERS", "SCHEDULES", "choose_threads", "forward_work", "torch_threads",
    "available_cores", "WORK_PER_THREAD",
]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train (hyper-parameters only; no model, data or device).

    ``schedule``: ``"constant"``, ``"step"`` (multiply by ``gamma`` at each epoch in ``milestones``),
    ``"cosine"`` (to 0 at the end) or ``"linear"`` (to 0 at the end); ``warmup_epochs`` (may be fractional)
    of linear warm-up precede any schedule. ``eval_train`` evaluates the full training set (eval mode) each
    epoch instead of reporting the running minibatch mean.

    >>> TrainConfig(epochs=5, optimizer="adam", lr=1e-3).to_dict()["optimizer"]
    'adam'
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    seed: int = 0
    eval_train: bool = True
    eval_batch_size: int = 8192

    def __post_init__(self):
        for flag in ("nesterov", "eval_train"):
            object.__setattr__(self, flag, check_bool(getattr(self, flag), flag))
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.eval_batch_size, "eval_batch_size", minimum=1)
        check_int(self.seed, "seed", minimum=0)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_fraction(self.momentum, "momentum", high_inclusive=False)
        check_fraction(self.gamma, "gamma", low_inclusive=False)
        for b in self.betas:
            check_fraction(b, "betas", high_inclusive=False)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs):
            raise ValueError(f"warmup_epochs must lie in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        # tuples, not lists, keep the dataclass hashable and equal to its JSON round trip
        ms = tuple(check_int(m, "milestones", minimum=1) for m in self.milestones)
        object.__setattr__(self, "milestones", ms)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule='step' needs milestones (epochs where the lr is multiplied by gamma)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"], d["betas"] = list(self.milestones), list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for k in ("milestones", "betas"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): warm-up, then the schedule."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        f = 1.0
    elif config.schedule == "step":
        epoch = step // steps_per_epoch
        f = config.gamma ** sum(epoch >= m for m in config.milestones)
    else:
        t = (step - warm) / max(1, total - warm)
        f = 0.5 * (1.0 + math.cos(math.pi * t)) if config.schedule == "cosine" else 1.0 - t
    return config.lr * f


@dataclasses.dataclass
class TrainHistory(Result):
    """Per-epoch metrics of one training. ``epoch[i]`` counts completed epochs (1-based); ``time`` is the
    wall-clock seconds of each epoch (evaluation included)."""

    epoch: list[int] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    train_acc: list[float] = dataclasses.field(default_factory=list)
    test_loss: list[float] = dataclasses.field(default_factory=list)
    test_acc: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    time: list[float] = dataclasses.field(default_factory=list)
    steps: int = 0

    @property
    def total_time(self) -> float:
        return float(sum(self.time))

    def final(self) -> dict[str, float]:
        """Metrics after the last epoch."""
        if not self.epoch:
            raise ValueError("the history is empty: no epoch was trained")
        return {k: getattr(self, k)[-1] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}

    def plot(self, ax=None):
        fig, ax = new_axes(ax)
        ax.plot(self.epoch, self.train_acc, label="train acc")
        ax.plot(self.epoch, self.test_acc, label="test acc")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax2 = ax.twinx()
        ax2.plot(self.epoch, self.test_loss, "k--", lw=0.8, label="test loss")
        ax2.set_ylabel("loss")
        # the loss lives on the twin axes: one legend gathers the lines of both
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
        return ax


def conform_inputs(model: nn.Module, X: torch.Tensor, what: str = "X") -> torch.Tensor:
    """``X`` (``(n, *sample_shape)``) viewed in ``model.input_shape`` by the input-shape rule (module doc).

    Unchanged when the model has no ``input_shape`` or the shapes already agree; reshaped when only the layout
    differs (same number of features); a ValueError naming both shapes when the feature counts differ.

    >>> from netgeom.nets import lenet_300_100
    >>> conform_inputs(lenet_300_100(), torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 784])
    """
    want = getattr(model, "input_shape", None)
    if want is None:
        return X
    want = tuple(int(s) for s in want)
    have = tuple(int(s) for s in X.shape[1:])
    if have == want:
        return X
    if math.prod(have) == math.prod(want):
        return X.reshape(X.shape[0], *want)
    raise ValueError(
        f"{what}: the model takes samples of shape {want} ({math.prod(want)} features) but the data's "
        f"samples have shape {have} ({math.prod(have)} features); build the model for the data's shape, or "
        "give data of the model's size (Dataset.flat() or Dataset.reshape(...) change only the layout, "
        "not the size)"
    )


# ------------------------------------------------------------------------------------------- data forms
def _unpack_batch(batch, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"{what}: every sample must be an (input, label) pair, got a batch of type {type(batch).__name__}"
        )
    xb, yb = batch
    if not isinstance(xb, torch.Tensor):
        raise TypeError(f"{what}: inputs must collate to a tensor, got {type(xb).__name__}")
    yb = torch.as_tensor(yb)
    if yb.ndim != 1 or yb.dtype.is_floating_point or yb.dtype.is_complex or yb.dtype == torch.bool:
        raise TypeError(f"{what}: labels must be integer class indices (one per sample), got a {yb.dtype} "
                        f"tensor of shape {tuple(yb.shape)}")
    return xb, yb


class _ListBatchSampler:
    """Batches of a fixed index order: netgeom, not the loader, decides the data order (seeded, resumable)."""

    def __init__(self, order: torch.Tensor, batch_size: int):
        self.order, self.batch_size = order.tolist(), batch_size

    def __iter__(self):
        bs = self.batch_size
        for i in range(0, len(self.order), bs):
            yield self.order[i : i + bs]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


class DataSplit:
    """One split (train or test) of a :class:`TrainingData`: tensors in memory, or a map-style torch
    ``Dataset`` read in mini-batches (through a ``DataLoader`` with netgeom's batch order)."""

    def __init__(self, what: str, X: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                 dataset=None, loader_kw: Mapping[str, Any] | None = None, batch_size: int | None = None):
        self.what = what
        self.X, self.y = X, y
        self.dataset = dataset
        self.loader_kw = dict(loader_kw or {})
        self.batch_size = batch_size  # the user's DataLoader batch size, checked against the TrainConfig
        if X is not None:
            self.n = int(X.shape[0])
            self.sample_shape = tuple(int(s) for s in X.shape[1:])
            self.dtype = X.dtype
        else:
            self.n = len(dataset)
            if self.n == 0:
                raise ValueError(f"the {what} data set is empty")
            x0, _ = self._collate([0])
            self.sample_shape = tuple(int(s) for s in x0.shape[1:])
            self.dtype = x0.dtype

    @property
    def in_memory(self) -> bool:
        return self.X is not None

    @property
    def nbytes(self) -> int:
        """Bytes the split takes as tensors (inputs and int64 labels)."""
        return self.n * (math.prod(self.sample_shape) * torch.empty((), dtype=self.dtype).element_size() + 8)

    def _loader(self, order: torch.Tensor, batch_size: int, seed: int):
        from torch.utils.data import DataLoader

        # the generator seeds worker processes (random transforms) from the seed and epoch, not the clock
        return DataLoader(self.dataset, batch_sampler=_ListBatchSampler(order, batch_size),
                          generator=torch.Generator().manual_seed(seed), **self.loader_kw)

    def _collate(self, idx):
        collate = self.loader_kw.get("collate_fn")
        if collate is None:
            from torch.utils.data import default_collate as collate
        return _unpack_batch(collate([self.dataset[i] for i in idx]), f"{self.what} data")

    def first(self) -> torch.Tensor:
        """The first sample's input, with a batch axis: ``(1, *sample_shape)``."""
        return self.X[:1] if self.in_memory else self._collate([0])[0]

    def batches(self, order: torch.Tensor | None, batch_size: int, seed: int = 0):
        """``(inputs, labels)`` mini-batches of ``batch_size`` in ``order`` (indices; None: 0..n-1)."""
        if self.in_memory:
            if order is None:
                for i in range(0, self.n, batch_size):
                    yield self.X[i : i + batch_size], self.y[i : i + batch_size]
            else:
                for i in range(0, len(order), batch_size):
                    idx = order[i : i + batch_size]
                    yield self.X[idx], self.y[idx]
            return
        if order is None:
            order = torch.arange(self.n)
        for batch in self._loader(order.cpu(), batch_size, seed):
            yield _unpack_batch(batch, f"{self.what} data")

    def materialise(self, batch_size: int = 8192) -> DataSplit:
        """The split as tensors in memory (read once, in order)."""
        if self.in_memory:
            return self
        xs, ys = zip(*self.batches(None, batch_size))
        return DataSplit(self.what, torch.cat(xs), torch.cat(ys))

    def hash_into(self, h, batch_size: int = 8192) -> None:
        """Feed the split into a hashlib object: inputs then labels, each a header (dtype, shape) and the
        raw bytes in order -- the same bytes whether the split is in memory or read in batches."""
        def header(dtype, shape):
            return str((torch.empty(0, dtype=dtype).numpy().dtype, tuple(shape))).encode()

        if self.in_memory:
            for t in (self.X, self.y):
                arr = t.detach().cpu().contiguous().numpy()
                h.update(str((arr.dtype, arr.shape)).encode())
                h.update(arr.tobytes())
            return
        ys = []
        h.update(header(self.dtype, (self.n, *self.sample_shape)))
        for xb, yb in self.batches(None, batch_size):
            h.update(xb.detach().cpu().contiguous().numpy().tobytes())
            ys.append(yb)
        y = torch.cat(ys).contiguous().numpy()
        h.update(str((y.dtype, y.shape)).encode())
        h.update(y.tobytes())


def _is_torch_data(obj) -> bool:
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    return isinstance(obj, (DataLoader, TorchDataset))


_ITERABLE = (
    "{what}: an IterableDataset has no random access, so netgeom cannot draw a seeded, resumable order from "
    "it; give a map-style Dataset (with __len__ and __getitem__)"
)


def _split_from_torch(obj, what: str) -> DataSplit:
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

    if isinstance(obj, DataLoader):
        loader, ds = obj, obj.dataset
        if isinstance(ds, IterableDataset):
            raise TypeError(_ITERABLE.format(what=what))
        if type(loader.sampler) not in (SequentialSampler, RandomSampler) or (
            loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler
        ):
            raise ValueError(f"{what}: the DataLoader has a custom sampler; netgeom draws the batch order "
                             "from the seed (so a resumed run is bit-identical) and cannot honour it")
        if loader.drop_last:
            raise ValueError(f"{what}: drop_last=True is not supported (every epoch covers every sample)")
        kw = {"collate_fn": loader.collate_fn, "num_workers": loader.num_workers,
              "pin_memory": loader.pin_memory, "worker_init_fn": loader.worker_init_fn,
              "timeout": loader.timeout}
        if loader.num_workers > 0:
            kw["multiprocessing_context"] = loader.multiprocessing_context
            kw["prefetch_factor"] = loader.prefetch_factor
        return DataSplit(what, dataset=ds, loader_kw=kw, batch_size=loader.batch_size)
    if isinstance(obj, IterableDataset):
        raise TypeError(_ITERABLE.format(what=what))
    if not hasattr(obj, "__len__"):
        raise TypeError(f"{what}: the torch Dataset has no __len__")
    return DataSplit(what, dataset=obj)


_DATA_FORMS = (
    "a netgeom Dataset, tensors (X_train, y_train, X_test, y_test) or a mapping with those keys, or a pair "
    "(train, test) / mapping {'train': ..., 'test': ...} of torch Datasets or DataLoaders"
)


class TrainingData:
    """The data a :class:`Trainer` or :class:`~netgeom.pruning.IMP` trains on: a train and a test
    :class:`DataSplit`, built by :meth:`from_any` from any accepted form:

    - a netgeom ``Dataset``; tensors ``(X_train, y_train, X_test, y_test)`` or a mapping with those keys;
    - a pair ``(train, test)`` (or ``{"train": ..., "test": ...}``) of torch ``Dataset``\\ s (map-style:
      ``__len__`` and ``__getitem__`` returning ``(input, label)``) or ``DataLoader``\\ s.

    A torch split is read into memory once when it fits (``in_memory=None``: its size is at most a quarter of
    the memory available), else streamed in mini-batches every epoch. Either way the batch order is drawn
    from the training seed and epoch, never from the loader's sampler, so the batches -- and so the trained
    weights -- are the same bit for bit in memory, streamed, and after a resume. A ``DataLoader`` contributes
    its dataset, ``collate_fn`` and worker settings (``num_workers``, ``pin_memory``, ``worker_init_fn``); a
    training loader's ``batch_size`` must equal the ``TrainConfig``'s, and evaluation uses
    ``TrainConfig.eval_batch_size``. Custom samplers, ``drop_last=True`` and ``IterableDataset`` are refused
    (they would make the order the loader's, not the seed's).

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> X, y = torch.randn(10, 3), torch.arange(10) % 2
    >>> td = TrainingData.from_any((TensorDataset(X, y), TensorDataset(X, y)), in_memory=False)
    >>> td.train.n, td.train.sample_shape, td.train.in_memory, td.fingerprint() == TrainingData.from_any(
    ...     (X, y, X, y)).fingerprint()
    (10, (3,), False, True)
    """

    def __init__(self, train: DataSplit, test: DataSplit):
        self.train, self.test = train, test

    @classmethod
    def from_any(cls, data, *, in_memory: bool | None = None) -> TrainingData:
        if in_memory is not None and not isinstance(in_memory, bool):
            raise TypeError(f"in_memory must be True, False or None (decide by size), got {in_memory!r}")
        if isinstance(data, TrainingData):
            out = data
        elif all(hasattr(data, a) for a in ("X_train", "y_train", "X_test", "y_test")):
            out = cls._from_tensors(data.X_train, data.y_train, data.X_test, data.y_test)
        elif isinstance(data, Mapping) and {"X_train", "y_train", "X_test", "y_test"} <= set(data):
            out = cls._from_tensors(data["X_train"], data["y_train"], data["X_test"], data["y_test"])
        elif isinstance(data, (tuple, list)) and len(data) == 4 and not any(_is_torch_data(d) for d in data):
            out = cls._from_tensors(*data)
        elif isinstance(data, Mapping) and set(data) == {"train", "test"} and all(
            _is_torch_data(v) for v in data.values()
        ):
            out = cls(_split_from_torch(data["train"], "train"), _split_from_torch(data["test"], "test"))
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_torch_data(v) for v in data):
            out = cls(_split_from_torch(data[0], "train"), _split_from_torch(data[1], "test"))
        else:
            what = type(data).__name__
            if isinstance(data, (tuple, list)):
                what = f"a {what} of {len(data)} ({', '.join(type(d).__name__ for d in data)})"
            raise TypeError(f"data must be {_DATA_FORMS}; got {what}")
        # in_memory concerns torch splits only: tensors are in memory already
        return out._placed(in_memory)

    def _placed(self, in_memory: bool | None) -> TrainingData:
        budget = None
        splits = []
        for s in (self.train, self.test):
            if not s.in_memory:
                if in_memory is None:
                    if budget is None:
                        avail = available_memory()
                        budget = avail // 4 if avail is not None else 0
                    if s.nbytes <= budget:
                        budget -= s.nbytes
                        s = s.materialise()
                elif in_memory:
                    s = s.materialise()
            splits.append(s)
        return TrainingData(*splits)

    @classmethod
    def _from_tensors(cls, X_train, y_train, X_test, y_test) -> TrainingData:
        splits = []
        for what, X, y in (("train", X_train, y_train), ("test", X_test, y_test)):
            X = check_tensor(X, f"X_{what}")
            y = check_tensor(y, f"y_{what}", ndim=1)
            if X.ndim < 2:
                raise ValueError(f"X_{what} must have a batch axis and at least one feature axis, got shape "
                                 f"{tuple(X.shape)}")
            if X.shape[0] != y.shape[0]:
                raise ValueError(f"X_{what} has {X.shape[0]} rows but y_{what} has {y.shape[0]}")
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise TypeError(f"y_{what} must hold integer class indices, got {y.dtype}")
            splits.append(DataSplit(what, X, y))
        return cls(*splits)

    def fingerprint(self) -> dict[str, Any]:
        """SHA-256 of both splits' inputs and labels (in order), with their sizes: what a run directory
        records to refuse resuming with other data. Streamed splits are read once for it."""
        h = hashlib.sha256()
        self.train.hash_into(h)
        self.test.hash_into(h)
        return {"sha256": h.hexdigest(), "n_train": self.train.n, "n_test": self.test.n}


# Held while torch's global RNG is seeded and drawn from (model initialisation, a training epoch's dropout):
# trainings in several threads of one process then take turns per epoch instead of mixing their streams.
# The one lock of netgeom._seeding, so that the model builders and the trainer exclude each other too.
RNG_LOCK = _GLOBAL_RNG_LOCK


# ------------------------------------------------------------------------------------------- threads
# Forward multiply-adds per training step that justify one intra-op thread (see choose_threads).
WORK_PER_THREAD = 1_000_000_000

_THREADS_LOCK = threading.Lock()
# inside: thread ident -> [blocks open in that thread, that thread's own count before its first block]
_THREADS_HELD: dict = {"inside": {}, "n": None, "before": None}
# With OpenMP (torch's usual CPU backend) the thread count is a per-thread setting: torch.set_num_threads in
# one thread leaves a thread that has already run a torch op at its own count (measured: a second thread
# entering a block of threads=1 kept 2). Every thread then sets and restores its own count. Other backends
# (native pool, TBB) share one count per process: set by the first block in, restored by the last one out.
_PER_THREAD_COUNT = "parallel backend: openmp" in torch.__config__.parallel_info().lower()


def _threads_after_fork() -> None:
    """In a forked child: a free lock and only the forking thread's blocks (the child has no other thread);
    when it held none, the caller's thread count comes back at once."""
    global _THREADS_LOCK
    _THREADS_LOCK = threading.Lock()
    held, me = _THREADS_HELD, threading.get_ident()
    held["inside"] = {me: held["inside"][me]} if me in held["inside"] else {}
    if not held["inside"] and held["n"] is not None:
        if not _PER_THREAD_COUNT:
            torch.set_num_threads(held["before"])
        held["n"] = held["before"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_threads_after_fork)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@torch.no_grad()
def forward_work(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``example`` (one sample with a batch axis) through the model's
    ``Linear`` and ``Conv`` layers (everything else is cheap beside them). The model's mode is restored.

    >>> from netgeom.nets import mlp
    >>> forward_work(mlp(40, [100, 100], 10), torch.zeros(1, 40))
    15000
    """
    work = [0]

    def hook(mod, _inp, out):
        if isinstance(mod, nn.Linear):
            work[0] += out.numel() * mod.in_features
        else:
            work[0] += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was_training = model.training
    try:
        model.eval()
        dev = next(iter(model.parameters()), torch.empty(0)).device
        model(conform_inputs(model, example[:1]).to(dev))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return work[0]


def choose_threads(work_per_step: int, cores: int | None = None) -> int:
    """Intra-op threads for a training step of ``work_per_step`` forward multiply-adds: one thread per
    :data:`WORK_PER_THREAD` (1e9), at least 1, at most ``cores`` (default: :func:`available_cores`, capped by
    torch's own default, which honours ``OMP_NUM_THREADS``).

    Why: torch's default is one thread per core, and each parallel region then waits for its slowest
    thread. For netgeom's usual networks (MLPs, LeNets: 1e6-5e7 multiply-adds per step) a region holds
    microseconds of work, less than the synchronisation, and when the cores are shared a descheduled thread
    stalls every layer (measured on 2 cores shared by other jobs, load 7-9: a 40-100-100-10 MLP epoch 0.08 s
    on 1 thread, 0.16-20 s on 2; LeNet-5 0.34 s against 2-4 s; even a residual conv net of 1.9e9 per step
    8.3 s against 21 s). A ResNet-20 step on CIFAR-10 (5e9) gets up to 5 threads, where each thread's share
    of a layer is large enough to pay on free cores. The rule is deterministic (no load average), so a
    resumed run uses the same count as the interrupted one; on an oversubscribed machine pass threads=1.

    >>> choose_threads(10**6, cores=8), choose_threads(2 * 10**9, cores=8), choose_threads(10**10, cores=8)
    (1, 2, 8)
    """
    check_int(work_per_step, "work_per_step", minimum=0)
    cores = min(available_cores(), _TORCH_DEFAULT_THREADS) if cores is None else check_int(cores, "cores",
                                                                                            minimum=1)
    return max(1, min(cores, work_per_step // WORK_PER_THREAD))


_TORCH_DEFAULT_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with torch's intra-op thread count set to ``n`` and restore it after (``None``: leave
    it). The count is set in the thread that enters the block (with OpenMP each thread has its own, so a
    reused pool thread gets ``n`` too) and restored there when it leaves. Concurrent blocks in threads of one
    process must ask for the same count (a different one raises: with backends other than OpenMP the setting
    is per process).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if n is None:
        yield
        return
    n = check_int(n, "threads", minimum=1)
    me = threading.get_ident()
    with _THREADS_LOCK:
        held = _THREADS_HELD
        inside = held["inside"]
        if inside and held["n"] != n:
            raise RuntimeError(
                f"torch's thread count is {held['n']} for a training already running in this process, and "
                f"this one asks for {n}: the setting is per process, so give both the same threads=, or run "
                "them in separate processes"
            )
        first_in_process = not inside
        if first_in_process:
            held["before"], held["n"] = torch.get_num_threads(), n
        entry = inside.setdefault(me, [0, None])
        entry[0] += 1
        if entry[0] == 1 and (_PER_THREAD_COUNT or first_in_process):
            entry[1] = torch.get_num_threads()  # this thread's own count (OpenMP) or the process's
            torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            inside = held["inside"]
            entry = inside[me]
            entry[0] -= 1
            if not entry[0]:
                del inside[me]
                if _PER_THREAD_COUNT:
                    torch.set_num_threads(entry[1])
            if not inside:
                if not _PER_THREAD_COUNT:
                    torch.set_num_threads(held["before"])
                held["n"] = held["before"] = None


def _threads_alias(threads, num_threads):
    if num_threads is None:
        return threads
    if threads != "auto":
        raise TypeError("give threads= or its older name num_threads=, not both")
    return check_int(num_threads, "num_threads", minimum=1)


def resolve_threads(threads, model: nn.Module, example: torch.Tensor, batch_size: int) -> int | None:
    """``threads`` as given (an int >= 1, or None: leave torch's setting) or, for ``"auto"``,
    :func:`choose_threads` of the model's work per step."""
    if threads is None:
        return None
    if isinstance(threads, str):
        if threads != "auto":
            raise ValueError(f"threads must be 'auto', a positive integer or None, got {threads!r}")
        return choose_threads(forward_work(model, example) * batch_size)
    n = check_int(threads, "threads", minimum=1)
    # intra-op threads beyond the cores only oversubscribe, and OpenMP aborts the process (not an
    # exception) when it cannot allocate tens of thousands of thread stacks
    cores = os.cpu_count() or 1
    if n > 4 * cores:
        raise ValueError(
            f"threads={n} is more than 4x the {cores} cores of this machine; use 'auto' or at most {cores}"
        )
    return n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X,
    y=None,
    *,
    split: str | None = None,
    batch_size: int = 8192,
    device: str | torch.device | None = None,
):
    """Mean cross-entropy and accuracy of ``model`` in eval mode (mode restored after), on ``(X, y)`` or on a
    netgeom ``Dataset``: ``evaluate(model, data)`` uses its test split, ``evaluate(model, data,
    split="train")`` its training split. ``split`` is only for a Dataset.

    Samples whose shape differs from ``model.input_shape`` only in layout are viewed in the model's shape; a
    different number of features raises a ValueError (the input-shape rule, module docstring).

    >>> from netgeom.nets import mlp
    >>> loss, acc = evaluate(mlp(4, [8], 3, seed=0), torch.zeros(5, 4), torch.zeros(5, dtype=torch.long))
    >>> 0.0 <= acc <= 1.0
    True
    >>> from netgeom.data.datasets import load_digits
    >>> data, net = load_digits(seed=0), mlp(64, [8], 10, seed=0)
    >>> evaluate(net, data) == evaluate(net, data.X_test, data.y_test)
    True
    """
    if all(hasattr(X, a) for a in ("X_train", "y_train", "X_test", "y_test")):
        if y is not None:
            raise TypeError("give either a Dataset or (X, y), not a Dataset and y")
        split = check_choice("test" if split is None else split, "split", ("test", "train"))
        X, y = (X.X_test, X.y_test) if split == "test" else (X.X_train, X.y_train)
    elif y is None:
        raise TypeError(f"evaluate takes (model, dataset) or (model, X, y); got X of type {type(X).__name__} "
                        "and no y")
    elif split is not None:
        raise TypeError("split selects a Dataset's split; with (X, y) leave it out")
    X = check_tensor(X, "X")
    y = check_tensor(y, "y", ndim=1)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError("cannot evaluate on an empty set")
    X = conform_inputs(model, X)
    check_finite_model(model)  # NaN weights would give (nan, accuracy of argmax over NaN): no answer
    if device is None:
        device = next(iter(model.parameters())).device
    device = check_device(device)
    batches = ((X[i : i + batch_size], y[i : i + batch_size]) for i in range(0, X.shape[0], batch_size))
    return _loss_acc(model, batches, X.shape[0], device)


@torch.no_grad()
def _loss_acc(model: nn.Module, batches, n: int, device) -> tuple[float, float]:
    """Mean loss and accuracy over ``(inputs, labels)`` batches in eval mode (mode restored after). One
    accumulation for tensors and streamed data, so both give the same numbers bit for bit."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for xb, yb in batches:
            xb, yb = conform_inputs(model, xb).to(device), yb.to(device)
            out = model(xb)
            loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss_sum / n, correct / n


# A callback is ``callback(event, trainer)`` with event "step" (after every optimiser step; trainer.step is
# the number of steps done) or "epoch" (after each epoch's evaluation; trainer.epoch is the epochs done).
Callback = Callable[[str, "Trainer"], None]


class Trainer:
    """Executes a :class:`TrainConfig` on a model and a data set; resumable through its ``state_dict``.

    ``masks`` (a :class:`~netgeom.pruning.Masks` or mapping param name -> bool tensor) are applied before the
    first step and after every optimiser step; gradients of masked weights are zeroed before the step so
    neither momentum nor Adam's moments can move them. ``start_step`` begins training at a global step
    (weight rewinding to iteration ``k`` continues the data order and schedule from ``k``).
    ``threads`` sets torch's intra-op threads during :meth:`run` (restored after, see :func:`torch_threads`):
    ``"auto"`` (default) picks them from the model's work per step (:func:`choose_threads`: one thread for
    MLPs and LeNets, more for ResNet-sized steps), an integer fixes them, ``None`` leaves torch's setting.
    The count changes floating-point rounding only (e.g. 7e-8 in the weights after two epochs of an MLP),
    not the result; the same count gives the same bits. ``num_threads`` is the older name of ``threads``.

    ``data`` is any form :class:`TrainingData` accepts (a netgeom ``Dataset``, tensors, torch Datasets or
    DataLoaders); torch splits are read into memory when they fit and streamed in mini-batches otherwise
    (``in_memory`` forces either), with the same seeded batch order, so the result is the same bit for bit.
    The data's samples are viewed in ``model.input_shape`` when only their layout differs, and a mismatch
    in the number of features raises a ValueError at construction (the input-shape rule, module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        config: TrainConfig,
        *,
        masks: Mapping[str, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        verbose: bool = True,
        callback: Callback | None = None,
        start_step: int = 0,
        threads: int | str | None = "auto",
        in_memory: bool | None = None,
        num_threads: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.data = TrainingData.from_any(data, in_memory=in_memory)
        tr, te = self.data.train, self.data.test
        if tr.n == 0:
            raise ValueError("data has no training samples")
        if te.n == 0:
            raise ValueError("data has no test samples")
        if tr.batch_size is not None and tr.batch_size != config.batch_size:
            raise ValueError(
                f"the training DataLoader has batch_size {tr.batch_size} but TrainConfig.batch_size is "
                f"{config.batch_size}; the TrainConfig's (part of the run description) sets the mini-batches"
            )
        check_finite_model(model)
        self.device = check_device(device)
        self.model = model.to(self.device)
        self.config = config
        self.verbose = check_bool(verbose, "verbose")
        self.callback = callback
        # the input-shape rule (module docstring): checked on one sample, applied to every batch as a view
        conform_inputs(model, tr.first(), "training inputs")
        conform_inputs(model, te.first(), "test inputs")
        self.X = self.y = self.X_test = self.y_test = None
        if tr.in_memory:
            self.X = conform_inputs(model, tr.X, "training inputs").to(self.device)
            self.y = tr.y.to(self.device)
        if te.in_memory:
            self.X_test = conform_inputs(model, te.X, "test inputs").to(self.device)
            self.y_test = te.y.to(self.device)
        self.n = tr.n
        threads = _threads_alias(threads, num_threads)
        self.threads = resolve_threads(threads, self.model, tr.first(), config.batch_size)
        self.steps_per_epoch = math.ceil(self.n / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.step = check_int(start_step, "start_step", minimum=0, maximum=self.total_steps)
        self.history = TrainHistory()
        # the epoch in progress: its running loss sums and, at an interruption, the global RNG's state (a
        # mid-epoch checkpoint carries both: dropout's draws and the epoch's train loss resume exactly)
        self._epoch_sums: list | None = None
        self._in_epoch = False
        self._rng_exit: torch.Tensor | None = None
        self._resume: dict | None = None
        self._set_masks(masks)
        params = list(model.parameters())
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                weight_decay=config.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )

    def _set_masks(self, masks) -> None:
        self.masks = masks
        self._mp: list[torch.Tensor] = []
        self._mm: list[torch.Tensor] = []
        if masks is None:
            return
        # imported here: netgeom.pruning imports this module
        from .pruning.masks import Masks

        if not isinstance(masks, Mapping):
            raise TypeError(
                f"masks must be a Masks or a mapping name -> bool tensor, got {type(masks).__name__}"
            )
        if not isinstance(masks, Masks):
            # a plain dict of floats such as 0.5 would otherwise rescale the weights instead of masking them
            masks = Masks(masks)
        masks.validate(self.model)
        self.masks = masks
        params = dict(self.model.named_parameters())
        for k, m in masks.items():
            if k not in params:
                raise KeyError(f"mask for '{k}', but the model has no parameter of that name")
            p = params[k]
            m = torch.as_tensor(m)
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask for '{k}' has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
            self._mp.append(p)
            # multiplying by a float mask is one fused foreach kernel per step: the cheapest exact masking
            self._mm.append(m.to(device=self.device, dtype=p.dtype))
        self._apply_masks()

    @torch.no_grad()
    def _apply_masks(self) -> None:
        if self._mp:
            torch._foreach_mul_(self._mp, self._mm)

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.step // self.steps_per_epoch

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def permutation(self, epoch: int) -> torch.Tensor:
        """The data order of ``epoch``: a function of ``(seed, epoch)`` only."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimiser, step (the schedule and data order derive from it)
        and the history so far. Tensors and plain data only (safe for ``torch.load(weights_only=True)``)."""
        out = {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            # optimiser.state_dict() returns live buffers that later steps mutate in place: copy them
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "step": self.step,
            "history": {f.name: getattr(self.history, f.name) for f in dataclasses.fields(self.history)},
            "config": self.config.to_dict(),
        }
        if self._epoch_sums is not None and self._mid_epoch():
            # (taken inside an epoch, from a "step" callback or after an interruption: the rest of the epoch
            # needs the global RNG where it stood, for dropout, and the loss sums so far, for its record)
            loss, correct, seen = self._epoch_sums
            rng = torch.get_rng_state() if self._in_epoch else self._rng_exit
            out["epoch_partial"] = {
                "loss": loss.detach().cpu().clone(), "correct": correct.detach().cpu().clone(), "seen": seen,
                "rng": rng.clone() if rng is not None else torch.empty(0, dtype=torch.uint8),
            }
        return out

    def _mid_epoch(self) -> bool:
        """The trainer stands inside an epoch, or after its last step but before its record."""
        return self.step % self.steps_per_epoch != 0 or len(self.history.epoch) < self.epoch

    def load_state_dict(self, state: Mapping[str, Any]) -> Trainer:
        if state.get("config") != self.config.to_dict():
            raise ValueError("the checkpoint was written with a different TrainConfig; refusing to resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = check_int(state["step"], "step", minimum=0, maximum=self.total_steps)
        self.history = TrainHistory(**state["history"])
        part = state.get("epoch_partial")
        self._resume = None
        if part is not None:
            if not (isinstance(part, Mapping) and {"loss", "correct", "seen", "rng"} <= set(part)):
                raise ValueError("the checkpoint's epoch_partial record is malformed")
            self._resume = dict(part)
        self._apply_masks()
        return self

    def _lr(self) -> float:
        return lr_at(self.config, self.step, self.steps_per_epoch)

    def run(self) -> TrainHistory:
        """Train until ``config.epochs`` are done (from wherever the trainer stands); return the history."""
        with torch_threads(self.threads):
            return self._run()

    def _train_batches(self, perm: torch.Tensor, first_batch: int, epoch: int):
        """The epoch's mini-batches from batch ``first_batch`` on, on the device, in the model's shape."""
        bs = self.config.batch_size
        if self.X is not None:
            for b in range(first_batch, self.steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                yield self.X[idx], self.y[idx]
            return
        seed = self.config.seed * 1_000_003 + epoch + 104_729
        for xb, yb in self.data.train.batches(perm[first_batch * bs :].cpu(), bs, seed):
            yield conform_inputs(self.model, xb).to(self.device), yb.to(self.device)

    def _evaluate(self, split: DataSplit, X, y) -> tuple[float, float]:
        ebs = self.config.eval_batch_size
        if X is not None:
            return evaluate(self.model, X, y, batch_size=ebs)
        return _loss_acc(self.model, split.batches(None, ebs), split.n, self.device)

    def _train_epoch(self, epoch: int, rng, run_loss, run_correct) -> None:
        """The steps of ``epoch`` from where the trainer stands, adding to the running loss sums."""
        cfg, model, opt = self.config, self.model, self.optimizer
        spe = self.steps_per_epoch
        loss_fn = nn.functional.cross_entropy
        batches = self._train_batches(self.permutation(epoch), self.step - epoch * spe, epoch)
        # RNG_LOCK: torch's global RNG is one per process; another training in a thread of this process
        # (joblib threading, a Dask worker's threads) must not reseed it mid-epoch
        with RNG_LOCK, torch.random.fork_rng(devices=[]):
            # dropout and other stochastic layers draw from the global RNG: seed it per epoch (a mid-epoch
            # resume continues from the state its checkpoint recorded)
            torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919)
            if rng is not None:
                torch.set_rng_state(rng)
            self._in_epoch = True
            try:
                for xb, yb in batches:
                    lr = self._lr()
                    for g in opt.param_groups:
                        g["lr"] = lr
                    out = model(xb)
                    loss = loss_fn(out, yb)
                    opt.zero_grad(set_to_none=False)
                    loss.backward()
                    if self._mp:
                        grads = [p.grad for p in self._mp]
                        if any(g is None for g in grads):
                            # a frozen or unused masked parameter has no gradient (its weights stay
                            # as they are, masked by _apply_masks): mask the others
                            kept = [i for i, g in enumerate(grads) if g is not None]
                            if kept:
                                torch._foreach_mul_([grads[i] for i in kept], [self._mm[i] for i in kept])
                        else:
                            torch._foreach_mul_(grads, self._mm)
                    opt.step()
                    self._apply_masks()
                    self.step += 1
                    if not cfg.eval_train:
                        run_loss += loss.detach() * len(yb)
                        run_correct += (out.detach().argmax(1) == yb).sum()
                        self._epoch_sums[2] += len(yb)
                    if self.callback is not None:
                        self.callback("step", self)
            finally:
                self._in_epoch = False
                self._rng_exit = torch.get_rng_state()

    def _run(self) -> TrainHistory:
        from tqdm.auto import tqdm

        cfg, model = self.config, self.model
        spe = self.steps_per_epoch
        bar = tqdm(
            total=cfg.epochs, initial=self.epoch, desc="train", unit="ep", disable=not self.verbose,
            leave=False,
        )
        resume, self._resume = self._resume, None
        try:
            while not self.done or (resume is not None and len(self.history.epoch) < self.epoch):
                t0 = time.perf_counter()
                pending = resume is not None and self.step % spe == 0 and len(self.history.epoch) < self.epoch
                epoch = self.epoch - 1 if pending else self.epoch
                run_loss = torch.zeros((), device=self.device)
                run_correct = torch.zeros((), dtype=torch.long, device=self.device)
                seen = 0
                if resume is not None:
                    run_loss += resume["loss"].to(run_loss)
                    run_correct += resume["correct"].to(run_correct)
                    seen = int(resume["seen"])
                rng = resume["rng"] if resume is not None and resume["rng"].numel() else None
                resume = None
                self._epoch_sums = [run_loss, run_correct, seen]
                model.train()
                if not pending:  # (else: a checkpoint after the epoch's last step: only its record is left)
                    self._train_epoch(epoch, rng, run_loss, run_correct)
                seen = self._epoch_sums[2]
                if not torch.isfinite(run_loss):
                    raise FloatingPointError(f"training diverged in epoch {epoch + 1} (non-finite loss)")
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise FloatingPointError(f"training diverged in epoch {epoch + 1} (non-finite weights)")
                if cfg.eval_train:
                    tr_loss, tr_acc = self._evaluate(self.data.train, self.X, self.y)
                else:
                    tr_loss, tr_acc = float(run_loss) / max(seen, 1), int(run_correct) / max(seen, 1)
                te_loss, te_acc = self._evaluate(self.data.test, self.X_test, self.y_test)
                if not math.isfinite(tr_loss):
                    raise FloatingPointError(f"training diverged in epoch {epoch + 1} (non-finite loss)")
                h = self.history
                h.epoch.append(epoch + 1)
                h.train_loss.append(tr_loss)
                h.train_acc.append(tr_acc)
                h.test_loss.append(te_loss)
                h.test_acc.append(te_acc)
                h.lr.append(lr_at(cfg, self.step - 1, spe))
                h.time.append(time.perf_counter() - t0)
                h.steps = self.step
                bar.update(1)
                bar.set_postfix(loss=f"{tr_loss:.3f}", test_acc=f"{te_acc:.3f}")
                if self.callback is not None:
                    self.callback("epoch", self)
        finally:
            bar.close()
        model.eval()
        return self.history


def train(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = True,
    callback: Callback | None = None,
    threads: int | str | None = "auto",
    in_memory: bool | None = None,
    num_threads: int | None = None,
) -> TrainHistory:
    """Train ``model`` on ``data`` with cross-entropy; see :class:`Trainer`. ``data``: a netgeom
    ``Dataset``, tensors, or torch Datasets/DataLoaders (see :class:`TrainingData`).

    The model is left in eval mode on ``device``. Samples whose shape differs from ``model.input_shape`` only
    in layout (e.g. MNIST's ``(1, 28, 28)`` for LeNet-300-100's ``(784,)``) are viewed in the model's shape;
    a different number of features raises a ValueError (the input-shape rule, module docstring).

    >>> from netgeom.nets import mlp
    >>> from netgeom.data.datasets import load_digits
    >>> h = train(mlp(64, [16], 10, seed=0), load_digits(seed=0), TrainConfig(epochs=1), verbose=False)
    >>> h.epoch
    [1]
    """
    return Trainer(model, data, config or TrainConfig(), masks=masks, device=device, verbose=verbose,
                   callback=callback, threads=threads, in_memory=in_memory, num_threads=num_threads).run()
