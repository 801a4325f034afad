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

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ._validation import (
    check_choice,
    check_device,
    check_finite_model,
    check_fraction,
    check_int,
    check_tensor,
)
from .results import Result, new_axes

__all__ = [
    "TrainConfig", "TrainHistory", "Trainer", "train", "evaluate", "lr_at", "conform_inputs", "OPTIMIZERS",
    "SCHEDULES",
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
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, X.shape[0], batch_size):
        xb, yb = X[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    return loss_sum / X.shape[0], correct / X.shape[0]


# A callback is ``callback(event, trainer)`` with event "step" (after every optimiser step; trainer.step is
# the number of steps done) or "epoch" (after each epoch's evaluation; trainer.epoch is the epochs done).
Callback = Callable[[str, "Trainer"], None]


class Trainer:
    """Executes a :class:`TrainConfig` on a model and a data set; resumable through its ``state_dict``.

    ``masks`` (a :class:`~netgeom.pruning.Masks` or mapping param name -> bool tensor) are applied before the
    first step and after every optimiser step; gradients of masked weights are zeroed before the step so
    neither momentum nor Adam's moments can move them. ``start_step`` begins training at a global step
    (weight rewinding to iteration ``k`` continues the data order and schedule from ``k``).
    ``num_threads`` sets torch's intra-op threads during :meth:`run` (restored after); ``None`` leaves them.
    Small networks train fastest on one thread, and one thread does not collapse when the cores are shared
    (measured: a 40-100-100-10 MLP IMP run took 3.8 s on 1 thread and 27 s on 2 under a load of 5 on 2 cores).

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
        num_threads: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for attr in ("X_train", "y_train", "X_test", "y_test"):
            if not hasattr(data, attr):
                raise TypeError(f"data must be a netgeom Dataset (with {attr}), got {type(data).__name__}")
        if data.X_train.shape[0] == 0:
            raise ValueError("data has no training samples")
        check_finite_model(model)
        self.device = check_device(device)
        self.model = model.to(self.device)
        self.config = config
        self.verbose = verbose
        self.callback = callback
        self.num_threads = None if num_threads is None else check_int(num_threads, "num_threads", minimum=1)
        # the input-shape rule (module docstring): views, so nothing is copied
        self.X = conform_inputs(model, data.X_train, "training inputs").to(self.device)
        self.X_test = conform_inputs(model, data.X_test, "test inputs").to(self.device)
        self.y, self.y_test = data.y_train.to(self.device), data.y_test.to(self.device)
        self.n = int(self.X.shape[0])
        self.steps_per_epoch = math.ceil(self.n / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.step = check_int(start_step, "start_step", minimum=0, maximum=self.total_steps)
        self.history = TrainHistory()
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
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            # optimiser.state_dict() returns live buffers that later steps mutate in place: copy them
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "step": self.step,
            "history": {f.name: getattr(self.history, f.name) for f in dataclasses.fields(self.history)},
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> Trainer:
        if state.get("config") != self.config.to_dict():
            raise ValueError("the checkpoint was written with a different TrainConfig; refusing to resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = check_int(state["step"], "step", minimum=0, maximum=self.total_steps)
        self.history = TrainHistory(**state["history"])
        self._apply_masks()
        return self

    def _lr(self) -> float:
        return lr_at(self.config, self.step, self.steps_per_epoch)

    def run(self) -> TrainHistory:
        """Train until ``config.epochs`` are done (from wherever the trainer stands); return the history."""
        if self.num_threads is None:
            return self._run()
        before = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> TrainHistory:
        from tqdm.auto import tqdm

        cfg, model, opt = self.config, self.model, self.optimizer
        bs, spe = cfg.batch_size, self.steps_per_epoch
        loss_fn = nn.functional.cross_entropy
        bar = tqdm(
            total=cfg.epochs, initial=self.epoch, desc="train", unit="ep", disable=not self.verbose,
            leave=False,
        )
        try:
            while not self.done:
                t0 = time.perf_counter()
                epoch = self.epoch
                perm = self.permutation(epoch)
                model.train()
                run_loss = torch.zeros((), device=self.device)
                run_correct = torch.zeros((), dtype=torch.long, device=self.device)
                seen = 0
                with torch.random.fork_rng(devices=[]):
                    # dropout and other stochastic layers draw from the global RNG: seed it per epoch
                    torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7919)
                    for b in range(self.step - epoch * spe, spe):
                        idx = perm[b * bs : (b + 1) * bs]
                        xb, yb = self.X[idx], self.y[idx]
                        lr = self._lr()
                        for g in opt.param_groups:
                            g["lr"] = lr
                        out = model(xb)
                        loss = loss_fn(out, yb)
                        opt.zero_grad(set_to_none=False)
                        loss.backward()
                        if self._mp:
                            torch._foreach_mul_([p.grad for p in self._mp], self._mm)
                        opt.step()
                        self._apply_masks()
                        self.step += 1
                        if not cfg.eval_train:
                            run_loss += loss.detach() * len(idx)
                            run_correct += (out.detach().argmax(1) == yb).sum()
                            seen += len(idx)
                        if self.callback is not None:
                            self.callback("step", self)
                if not torch.isfinite(run_loss):
                    raise FloatingPointError(f"training diverged in epoch {epoch + 1} (non-finite loss)")
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise FloatingPointError(f"training diverged in epoch {epoch + 1} (non-finite weights)")
                if cfg.eval_train:
                    tr_loss, tr_acc = evaluate(model, self.X, self.y, batch_size=cfg.eval_batch_size)
                else:
                    tr_loss, tr_acc = float(run_loss) / max(seen, 1), int(run_correct) / max(seen, 1)
                te_loss, te_acc = evaluate(model, self.X_test, self.y_test, batch_size=cfg.eval_batch_size)
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
    num_threads: int | None = None,
) -> TrainHistory:
    """Train ``model`` on ``data`` (a netgeom ``Dataset``) with cross-entropy; see :class:`Trainer`.

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
                   callback=callback, num_threads=num_threads).run()
