"""Iterative magnitude pruning (IMP) with rewinding, resumable from a run directory.

Level 0 trains the dense network. Level ``r >= 1`` prunes the weights of level ``r - 1`` down to global
density ``(1 - q)^r`` (i.e. ``q`` of the remaining weights; the target count is computed from the level so
that rounding never accumulates: density is ``(1 - q)^r`` to one weight), rewinds, and retrains:

- ``rewind="init"``: the initial weights (lottery ticket, ``k = 0``);
- ``rewind=("epoch", k)`` / ``("iteration", k)``: the weights saved at epoch/iteration ``k`` of level 0's
  training, and training continues from step ``k`` (data order and schedule included; Frankle et al. 2020);
- ``rewind="lr"``: keep the trained weights and replay the whole learning-rate schedule (Renda et al. 2020).

One-shot prune + fine-tune is ``rounds=1``. ``prune="random"`` removes random weights with the same counts
(the random-pruning baseline).

Level record (:class:`IMPLevel`) attributes: ``level``, ``sparsity`` (global, over the masked tensors),
``density``, ``layer_sparsity`` ({param_name: sparsity}), ``n_kept``, ``train_loss``, ``train_acc``,
``test_loss``, ``test_acc`` (after the level's last epoch), ``masks`` (:class:`Masks`), ``weights`` (CPU state
dict), ``weights_path`` (file in the run directory or ``None``), ``seed``, ``time`` (training seconds),
``history`` (:class:`~netgeom.training.TrainHistory`).

>>> cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10},
...                 data={"name": "digits", "seed": 0}, train=TrainConfig(epochs=1, lr=0.05), rounds=2)
>>> res = IMP(cfg, verbose=False).run()
>>> [round(lv.density, 2) for lv in res.levels]
[1.0, 0.8, 0.64]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import check_bool, check_choice, check_fraction, check_int
from ..data.datasets import load_dataset
from ..nets import build_model
from ..results import Result, new_axes
from ..training import (
    RNG_LOCK,
    TrainConfig,
    Trainer,
    TrainHistory,
    TrainingData,
    _threads_alias,
    conform_inputs,
    resolve_threads,
    torch_threads,
)
from .masks import Masks
from .rules import ProtectFn, magnitude_prune, random_prune
from .runs import IncompleteRunError, RunDir, _code_text, _same_code, code_identity, load_state_file, run_lock

__all__ = [
    "IMPConfig", "IMP", "IMPLevel", "IMPResult", "read_run", "imp_main", "demo_imp", "demo_section",
    "parse_rewind", "import_factory", "build_imp_model",
]


_REWIND_FORMS = (
    "rewind must be one of: \"init\", \"lr\", (\"epoch\", k) or \"epoch:k\", (\"iteration\", k) or "
    "\"iteration:k\" (k an integer >= 0)"
)


def parse_rewind(rewind: Any) -> str | tuple[str, int]:
    """Normalise a rewind spec: ``"init"``, ``"lr"``, ``("epoch", k)`` / ``"epoch:k"`` or
    ``("iteration", k)`` / ``"iteration:k"`` (``k >= 0``). Every bad spec raises one ValueError listing all
    accepted forms.

    >>> parse_rewind("epoch:2"), parse_rewind(["iteration", 10]), parse_rewind("init")
    (('epoch', 2), ('iteration', 10), 'init')
    """
    def bad(why: str = "") -> ValueError:
        return ValueError(f"{_REWIND_FORMS}; got {rewind!r}{why}")

    spec = rewind
    if isinstance(spec, str):
        if spec in ("init", "lr"):
            return spec
        if ":" not in spec:
            raise bad()
        kind, _, k = spec.partition(":")
        try:
            spec = (kind.strip(), int(k))
        except ValueError:
            raise bad(" (the part after ':' must be an integer)") from None
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] in ("epoch", "iteration")):
        raise bad()
    k = spec[1]
    # bool is an int subclass, and a float such as 1.5 has no exact step: neither is a rewind point
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise bad(f" ({spec[0]} k must be an integer >= 0)")
    return (spec[0], int(k))


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"builtins", "os", "sys", "subprocess"}


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named by ``"package.module:attribute"`` (``attribute`` may be dotted, e.g.
    ``"mypkg.models:ResNet.small"``).

    Only the named module is imported (``importlib.import_module``); the attribute is then looked up by
    ``getattr``, one identifier at a time. Nothing in the string is evaluated, so a description read from a
    file can name a factory but cannot run an expression. The factory must be a Python function or class
    outside the standard library (so ``"os:system"``, ``"subprocess:run"`` or ``"builtins:exec"`` are
    refused). A factory is still code that runs: load descriptions you trust, as you would a script.

    >>> import_factory("netgeom.nets:mlp").__name__
    'mlp'
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"a model factory is named 'package.module:function', got {path!r}")
    mod_name, _, attr = path.partition(":")
    parts = [(p, "module") for p in mod_name.split(".")] + [(p, "attribute") for p in attr.split(".")]
    for part, what in parts:
        if not _IDENTIFIER.match(part):
            raise ValueError(f"model factory {path!r}: {part!r} is not a valid {what} name (identifiers "
                             "separated by dots, then ':' and the function's name)")
    if mod_name.split(".")[0] in _STDLIB:
        raise ValueError(f"model factory {path!r}: {mod_name!r} is a standard-library module, which builds "
                         "no networks; name your own module's function")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ImportError(f"model factory {path!r}: cannot import module {mod_name!r} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"model factory {path!r}: {mod_name!r} has no attribute {attr!r}") from None
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        raise TypeError(f"model factory {path!r} names a {type(obj).__name__}, not a Python function or "
                        "class")
    return obj


def _takes_seed(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    p = params.get("seed")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _call_factory(fn: Callable, kwargs: Mapping[str, Any], seed: int, what: str) -> nn.Module:
    """``fn(**kwargs)`` with torch's RNG seeded by ``seed`` for the call only (the global RNG is restored)."""
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = fn(**kwargs)
        except TypeError as exc:
            raise TypeError(f"bad arguments for model {what}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {what} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_imp_model(
    description: Mapping[str, Any], seed: int | None = None, model_fn: Callable | None = None
) -> nn.Module:
    """Build the network an IMP model description names (see :class:`IMPConfig`): a netgeom builder
    (``{"name": ...}``), a factory by import path (``{"factory": "mod:fn", **kwargs}``) or a callable
    (``{"callable": name}``, which needs ``model_fn``). Initialisation is seeded by the description's
    ``"seed"``, or by ``seed`` for a factory that takes none (the run's seed, ``IMPResult.config["seed"]``).

    >>> desc = {"factory": "netgeom.nets:mlp", "n_in": 4, "widths": [3], "n_out": 2, "seed": 1}
    >>> build_imp_model(desc)[0].weight.shape
    torch.Size([3, 4])
    """
    desc = dict(description)
    if "seed" in desc:
        if seed is not None and seed != desc["seed"]:
            raise ValueError(f"seed {seed} differs from the description's seed {desc['seed']}")
        seed = desc["seed"]
    if seed is None:
        raise ValueError("the model description has no 'seed': pass seed= (the run's seed)")
    if "name" in desc:
        with RNG_LOCK, torch.random.fork_rng(devices=[]):
            return build_model(desc)
    if "factory" in desc:
        what = f"factory {desc['factory']!r}"
        fn = import_factory(desc.pop("factory"))
    elif "callable" in desc:
        what = f"callable {desc['callable']!r}"
        if model_fn is None:
            raise ValueError(f"the model is the {what}, which a description cannot rebuild: pass the "
                             "callable (model_fn=...)")
        desc.pop("callable")
        fn = model_fn
    else:
        raise TypeError(f"a model description has 'name' (netgeom builder), 'factory' (import path) or "
                        f"'callable'; got {description!r}")
    if not _takes_seed(fn):
        desc.pop("seed", None)
    return _call_factory(fn, desc, seed, what)


def _check_factory(description: Mapping[str, Any], model_fn, seed: int) -> None:
    """A user factory must build the same network from the same seed (or a resumed run would not be the
    interrupted one) and a different one from another seed (or seeds would silently not reach
    initialisation, e.g. a factory that calls ``torch.manual_seed(0)`` itself)."""
    what = description.get("factory", description.get("callable"))

    def state(s):
        d = {**description, "seed": s} if "seed" in description else dict(description)
        with RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(s + 9_999_991)  # a global RNG state unrelated to the seed
            sd = build_imp_model(d, s, model_fn).state_dict()
        return sd

    a, b = state(seed), state(seed)
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise ValueError(f"model {what!r} builds different networks from the same seed: it draws from a "
                         "source netgeom does not seed (numpy, random, its own torch.Generator); use torch's "
                         "global RNG or take a 'seed' argument, so that runs are reproducible and resumable")
    c = state(seed + 1)
    floats = [k for k in a if a[k].is_floating_point() and a[k].numel()]
    if floats and all(torch.equal(a[k], c[k]) for k in floats):
        raise ValueError(f"model {what!r} builds the same initial weights for seeds {seed} and {seed + 1}: "
                         "it ignores the seed (e.g. it calls torch.manual_seed itself); take a 'seed' "
                         "argument or leave seeding to netgeom")


@dataclasses.dataclass(frozen=True)
class IMPConfig:
    """A complete, JSON-able IMP experiment (no execution details such as device or output directory).

    ``model`` is one of

    - a netgeom builder's description, ``{"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10}``;
    - a user factory by import path, ``{"factory": "mypkg.models:resnet20", "num_classes": 10}``: the other
      keys are passed to it as keyword arguments. Only the module is imported; nothing is evaluated;
    - a callable with an explicit name, ``IMPConfig(model=my_fn, model_name="mine", ...)``, described as
      ``{"callable": "mine"}``. The name is the callable's identity in the run description and hash (a
      lambda or closure has no reproducible one, so a callable without ``model_name`` is refused); give a
      new name when the function changes. ``from_dict`` then needs ``model_fn=my_fn``.

    Factories and callables are called with torch's RNG seeded by ``seed`` (and restored after); one that
    takes a ``seed`` argument also gets it, recorded in the description as for netgeom's builders. At
    construction a factory is built three times to check it: the same seed must give the same weights, and
    ``seed + 1`` other ones.

    ``protect`` names the protect callback of a protected run (as :class:`IMP` records it in the run
    description, so that ``from_dict`` of a protected run's description round trips); the callback itself is
    handed to ``IMP(config, protect=fn)``, which requires it for such a config.

    ``seed`` is the run's seed: it is written into the model description (initialisation), replaces
    ``train.seed`` (data order) and seeds random pruning. A model description carrying a different seed is an
    error. ``data`` is a :func:`~netgeom.data.load_dataset` description, or for your own data (handed to
    ``IMP(..., data=...)``) any description with a ``"name"``: the data themselves are fingerprinted in the
    run directory. The model description is checked by building it at construction (unknown name or bad
    arguments raise here); whether its input size fits the data is checked when the data are there
    (``IMP(..., data=...)`` or the start of ``run()``).

    >>> cfg = IMPConfig(model={"factory": "netgeom.nets:mlp", "n_in": 64, "widths": [8], "n_out": 10},
    ...                 data={"name": "digits"})
    >>> cfg.to_dict()["model"]
    {'factory': 'netgeom.nets:mlp', 'n_in': 64, 'widths': [8], 'n_out': 10, 'seed': 0}
    """

    model: Any
    data: Mapping[str, Any]
    train: TrainConfig = TrainConfig()
    q: float = 0.2
    rounds: int = 3
    rewind: Any = "init"
    scope: str = "global"
    include_output: bool = True
    prune: str = "magnitude"
    seed: int = 0
    model_name: str | None = None
    model_fn: Callable[..., nn.Module] | None = dataclasses.field(default=None, compare=False, repr=False)
    protect: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "include_output", check_bool(self.include_output, "include_output"))
        if self.protect is not None and (not isinstance(self.protect, str) or not self.protect.strip()):
            raise TypeError(
                f"IMPConfig.protect is the name of a protect callback (as a run description records it), got "
                f"{self.protect!r}; the callback itself goes to IMP(config, protect=fn)"
            )
        model = self.model
        if callable(model) and not isinstance(model, Mapping):
            if not isinstance(self.model_name, str) or not self.model_name.strip():
                raise TypeError(
                    f"model {model!r} is a callable without a name: pass model_name='...' (it names the "
                    "model in the run description and hash; a lambda or closure has no reproducible identity)"
                )
            if self.model_fn is not None and self.model_fn is not model:
                raise ValueError("give the callable once, as model=")
            object.__setattr__(self, "model_fn", model)
            model = {"callable": self.model_name}
        if not isinstance(model, Mapping) or not ({"name", "factory", "callable"} & set(model)):
            raise TypeError(
                "model must be a build_model description with a 'name', a factory {'factory': "
                f"'package.module:function', **kwargs}} or a callable with model_name=...; got {model!r}"
            )
        kinds = {"name", "factory", "callable"} & set(model)
        if len(kinds) > 1:
            raise ValueError(f"model description has {sorted(kinds)}: give exactly one of them")
        if "callable" in model:
            if self.model_fn is None:
                raise TypeError(f"model describes the callable {model['callable']!r}: pass it as model_fn=")
            if self.model_name is not None and self.model_name != model["callable"]:
                raise ValueError(f"model_name {self.model_name!r} differs from the description's callable "
                                 f"{model['callable']!r}")
            object.__setattr__(self, "model_name", model["callable"])
        elif self.model_name is not None or self.model_fn is not None:
            raise ValueError("model_name/model_fn are for a model given as a callable; this model is a "
                             "description")
        if not isinstance(self.data, Mapping) or "name" not in self.data:
            raise TypeError(f"data must be a load_dataset description with a 'name', got {self.data!r}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        seed = check_int(self.seed, "seed", minimum=0)
        if "seed" in model and model["seed"] != seed:
            raise ValueError(
                f"model description has seed {model['seed']} but IMPConfig.seed is {seed}; "
                "give the seed once, as IMPConfig.seed"
            )
        check_fraction(self.q, "q", low_inclusive=False, high_inclusive=False)
        check_int(self.rounds, "rounds", minimum=0)
        check_choice(self.scope, "scope", ("global", "layer"))
        check_choice(self.prune, "prune", ("magnitude", "random"))
        rw = parse_rewind(self.rewind)
        # iteration bounds depend on the data size and are checked when the run starts
        if isinstance(rw, tuple) and rw[0] == "epoch" and rw[1] >= self.train.epochs:
            raise ValueError(f"rewind to epoch {rw[1]} needs k < epochs ({self.train.epochs})")
        object.__setattr__(self, "rewind", rw)
        if "name" in model or _takes_seed(import_factory(model["factory"]) if "factory" in model
                                          else self.model_fn):
            model = {**dict(model), "seed": seed}
        elif "seed" in model:
            what = model.get("factory", model.get("callable"))
            raise ValueError(f"model {what!r} takes no 'seed' argument; leave 'seed' out of its description "
                             "(IMPConfig.seed seeds torch's RNG for it)")
        object.__setattr__(self, "model", dict(model))
        # built here so that a wrong name or argument fails when the experiment is described, not after the
        # data are loaded; the networks netgeom builds take milliseconds
        try:
            if "name" in model:
                build_model(self.model)
            else:
                _check_factory(self.model, self.model_fn, seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"IMPConfig.model {self.model!r}: {exc}") from None
        object.__setattr__(self, "data", dict(self.data))
        object.__setattr__(self, "train", self.train.replace(seed=seed))

    def to_dict(self) -> dict[str, Any]:
        """The description that names the run directory (hashed) and is written to ``description.json``."""
        return {
            "kind": "imp",
            "model": dict(self.model),
            "data": dict(self.data),
            "train": self.train.to_dict(),
            "q": self.q,
            "rounds": self.rounds,
            "rewind": list(self.rewind) if isinstance(self.rewind, tuple) else self.rewind,
            "scope": self.scope,
            "include_output": self.include_output,
            "prune": self.prune,
            "seed": self.seed,
            # only when set: the descriptions (and run directory hashes) of unprotected runs stay as they were
            **({"protect": self.protect} if self.protect is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, model_fn: Callable[..., nn.Module] | None = None
                  ) -> IMPConfig:
        """The config of a :meth:`to_dict` description, such as :attr:`IMPResult.config`; a
        ``{"callable": name}`` model needs ``model_fn``. A protected run's description gives a config whose
        ``protect`` names the callback, which :class:`IMP` then requires:
        ``IMP(IMPConfig.from_dict(res.config), protect=fn)``."""
        d = dict(d)
        d.pop("kind", None)
        d["train"] = TrainConfig.from_dict(d["train"]) if "train" in d else TrainConfig()
        return cls(**d, model_fn=model_fn)

    def with_seed(self, seed: int) -> IMPConfig:
        """The same experiment with another seed (model init, data order and random pruning)."""
        model = {k: v for k, v in self.model.items() if k != "seed"}
        return dataclasses.replace(self, seed=seed, model=model)

    def build_model(self) -> nn.Module:
        """A freshly initialised network of this config (the same weights every call)."""
        return build_imp_model(self.model, self.seed, self.model_fn)

    def level_density(self, level: int) -> float:
        return (1.0 - self.q) ** level


@dataclasses.dataclass
class IMPLevel(Result):
    """One IMP level (see the module docstring for the attributes)."""

    level: int
    sparsity: float
    density: float
    n_kept: int
    layer_sparsity: dict[str, float]
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seed: int
    time: float
    weights_path: str | None = None
    masks: Masks | None = dataclasses.field(default=None, repr=False)
    weights: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False)
    history: TrainHistory | None = dataclasses.field(default=None, repr=False)

    def plot(self, ax=None):
        if self.history is None:
            raise ValueError("this level has no training history to plot")
        return self.history.plot(ax)


@dataclasses.dataclass
class IMPResult(Result):
    """All levels of one IMP run; ``plot()`` draws test (and train) accuracy against sparsity.

    ``code`` is the identity of the code the levels were computed with (a
    :func:`~netgeom.pruning.runs.code_identity` record): this process's for a run it computed (the run
    directory's, for a resumed one), the one ``code.json`` records for a run read back by :func:`read_run`,
    which may be other code than the reader's; ``None`` when unknown (a run directory written before run
    directories recorded their code, or a result rebuilt by hand). ``code_note`` says which, in words, for a
    result of :func:`read_run` (``None`` for one this process computed). ``complete`` is ``False`` only for
    ``read_run(..., partial=True)`` of an unfinished run: ``levels`` then holds its finished levels only.
    All three are part of :meth:`to_dict`.
    """

    config: dict[str, Any]
    levels: list[IMPLevel]
    run_dir: str | None = None
    # the model callable of a {"callable": name} description (not part of the JSON); model_at needs it
    model_fn: Callable[..., nn.Module] | None = dataclasses.field(default=None, repr=False, compare=False)
    code: dict[str, Any] | None = None
    code_note: str | None = None
    complete: bool = True

    @property
    def sparsities(self) -> list[float]:
        return [lv.sparsity for lv in self.levels]

    @property
    def test_accs(self) -> list[float]:
        return [lv.test_acc for lv in self.levels]

    def _level(self, level: int) -> IMPLevel:
        n = len(self.levels)
        if n == 0:
            raise ValueError("this IMP result has no levels")
        level = check_int(level, "level", minimum=-n, maximum=n - 1)
        return self.levels[level]

    def masks_at(self, level: int = -1) -> Masks:
        """The :class:`Masks` of IMP level ``level`` (``0`` dense, ``-1`` the last; negative counts from the
        end): the level record's own masks, or, when the record holds none (e.g. a result rebuilt from JSON),
        those saved in the run directory (``level_<r>/masks.npz``).

        >>> cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
        ...                 data={"name": "digits"}, train=TrainConfig(epochs=1), rounds=1)
        >>> res = IMP(cfg, verbose=False).run()
        >>> round(res.masks_at(1).density(), 2), res.masks_at(-1) is res.levels[1].masks
        (0.8, True)
        """
        lv = self._level(level)
        if lv.masks is not None:
            return lv.masks
        if self.run_dir is None:
            raise ValueError(
                f"level {lv.level} holds no masks and this result has no run directory to read them from"
            )
        # read-only and validated, whatever code wrote the run (a bad file names its recovery)
        return RunDir.open(self.run_dir).load_masks(f"level_{lv.level}/masks.npz")

    def model_at(self, level: int = -1) -> nn.Module:
        """The trained, masked network of a level (rebuilt from the description, eval mode)."""
        lv = self._level(level)
        if lv.weights is None:
            if lv.weights_path is None:
                raise ValueError(f"level {lv.level} holds no weights and no weights file")
            weights = None
        else:
            weights = lv.weights
        model = build_imp_model(self.config["model"], self.config.get("seed"), self.model_fn)
        if weights is None:  # read back and checked against the model; a bad file is named
            weights = load_state_file(lv.weights_path, like=model.state_dict())
        model.load_state_dict(weights)
        self.masks_at(level).apply(model)
        return model.eval()

    def plot(self, ax=None):
        fig, ax = new_axes(ax)
        s = [100 * x for x in self.sparsities]
        ax.plot(s, self.test_accs, "o-", label="test")
        ax.plot(s, [lv.train_acc for lv in self.levels], "s--", alpha=0.6, label="train")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"IMP ({self.config.get('prune', 'magnitude')}, rewind={self.config.get('rewind')})")
        ax.legend()
        return ax


def _load_level(rd: RunDir, level: int, model: nn.Module) -> IMPLevel:
    """A finished level read back from a run directory (a resume and :func:`read_run` alike): every file
    validated (types, masks and weights against ``model``); a bad one names its recovery."""
    rec, masks, weights, hist = rd.load_level(level, model, IMPLevel, TrainHistory)
    # the file read, wherever the run was written (record.json holds the path it had then)
    rec["weights_path"] = str(rd.file(f"level_{level}/weights.pt"))
    return IMPLevel(**rec, masks=masks, weights=weights, history=hist)


def read_run(path: str | os.PathLike, *, partial: bool = False,
             model_fn: Callable[..., nn.Module] | None = None, code: Mapping[str, Any] | None = None
             ) -> IMPResult:
    """The :class:`IMPResult` of a finished IMP run directory, read back read-only, whatever code wrote it.

    This is how results computed by another version of netgeom are looked at: :class:`IMP` refuses to reopen
    them (:class:`~netgeom.pruning.runs.CodeMismatchError`), since resumed levels would mix two codes and
    the results would be reported as the running code's. ``read_run`` computes nothing and reports whose code
    the numbers come from: the result's ``code`` is the identity ``code.json`` records (``None`` for a run
    written before run directories recorded one) and ``code_note`` says in words whether that is the code
    reading it (``code``: the reader's identity, as :class:`IMP` takes it; default
    :func:`~netgeom.pruning.runs.code_identity` of netgeom); both are in :meth:`~IMPResult.to_dict`.

    Nothing in the directory is created, locked or written (:meth:`RunDir.open`), so it works on a run
    shared read-only. Every file is validated as when a run resumes: JSON against the records' fields and
    types, masks and weights (``weights_only`` loading, pickles never run) against the network the
    description builds, which this code builds (a netgeom builder's name, a factory imported by its module
    path, or ``model_fn`` for a ``{"callable": name}`` model). A bad file raises
    :class:`~netgeom.pruning.runs.CorruptRunFileError`; for a run of other code the message adds that the
    file may be intact but other than what this code expects.

    A run with unfinished levels (interrupted, or still running in another process) raises
    :class:`~netgeom.pruning.runs.IncompleteRunError` naming them; ``partial=True`` returns its finished
    levels instead, with ``complete=False``.

    >>> import tempfile
    >>> cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
    ...                 data={"name": "digits"}, train=TrainConfig(epochs=1), rounds=1)
    >>> res = IMP(cfg, out_dir=tempfile.mkdtemp(), verbose=False).run()
    >>> back = read_run(res.run_dir)
    >>> back.test_accs == res.test_accs, back.code == res.code, back.complete
    (True, True, True)
    """
    check_bool(partial, "partial")
    rd = RunDir.open(path, code=code)
    desc = dict(rd.description)
    name = "description.json"
    if desc.get("kind") != "imp":
        raise ValueError(
            f"{rd.path} is not an IMP run (its description's kind is {desc.get('kind')!r}): read_run reads "
            "IMP runs; RunDir.open(path) opens any run directory read-only"
        )
    with rd.reading(name):
        rounds, seed = desc["rounds"], desc["seed"]
        if not isinstance(desc["model"], dict):
            raise TypeError(f"'model' is a {type(desc['model']).__name__}, not a description")
        for key, value in (("rounds", rounds), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"'{key}' is {value!r}, not an integer >= 0")
    try:  # the network the files are checked against
        model = build_imp_model(desc["model"], seed, model_fn)
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        raise type(exc)(f"run {rd.path}: this code cannot build its model {desc['model']!r} ({exc}), which "
                        "its weights and masks are checked against") from None
    done = [lv for lv in range(rounds + 1) if rd.exists(f"level_{lv}/record.json")]
    n = next((i for i, lv in enumerate(done) if lv != i), len(done))
    if n < len(done):  # IMP finishes levels in order: a later one without its predecessor was tampered with
        raise rd.corrupt(f"level_{done[n]}/record.json", f"level {n} before it is not finished")
    missing = list(range(n, rounds + 1))
    if missing and not partial:
        raise IncompleteRunError(
            f"run {rd.path} is incomplete: level(s) {missing} of 0..{rounds} are not finished ({n} are); "
            "read_run(path, partial=True) reads the finished ones, and IMP resumes the run with the code "
            "that wrote it"
        )
    levels = [_load_level(rd, lv, model) for lv in range(n)]
    if rd.code is None:
        note = (f"read from run {rd.path}, which records no code identity (written before run directories "
                "recorded one): the code these levels were computed with is unknown")
    elif _same_code(rd.code, rd.code_now):
        note = f"read from run {rd.path}, written by the code reading it ({_code_text(rd.code)})"
    else:
        note = (f"read from run {rd.path}, computed by other code ({_code_text(rd.code)}) than the code "
                f"reading it ({_code_text(rd.code_now)})")
    return IMPResult(config=desc, levels=levels, run_dir=str(rd.path), model_fn=model_fn, code=rd.code,
                     code_note=note, complete=not missing)


LevelCallback = Callable[[int, str, Trainer], None]


def _protect_name(protect: Callable, name: str | None, need_stable: bool) -> str:
    """The name under which a protect callback enters the run description."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"protect_name must be a non-empty string, got {name!r}")
        return name
    qual = getattr(protect, "__qualname__", None)
    mod = getattr(protect, "__module__", None)
    if qual is None or mod is None or "<" in qual:
        if need_stable:
            raise ValueError(
                f"protect={protect!r} has no stable name (a lambda, local function or partial), so the run "
                "directory could not record it; pass protect_name='...' or use a module-level function"
            )
        return repr(protect)
    return f"{mod}.{qual}"


class IMP:
    """Run an :class:`IMPConfig`: ``IMP(config, out_dir=None, protect=None).run() -> IMPResult``.

    ``out_dir`` enables checkpoints: the run lives in ``out_dir/imp-<hash>`` and a repeated call resumes from
    the last completed level/epoch. ``protect(model, masks)`` is passed to the pruning rule at every level.
    ``data`` hands in the data instead of loading ``config.data``: a netgeom ``Dataset``, tensors
    ``(X_train, y_train, X_test, y_test)``, or ``(train, test)`` torch Datasets / DataLoaders (see
    :class:`~netgeom.training.TrainingData`; ``in_memory`` decides whether torch data are read into memory or
    streamed, by default by size). Their fingerprint is recorded in the run directory on the first run, and
    a resume with other data is refused.
    ``callback(level, event, trainer)`` sees ``"start"`` (weights rewound, masks applied, before training),
    ``"step"`` and ``"epoch"``; raising from it interrupts the run (checkpoints stay consistent).
    ``threads``: torch's intra-op threads while the run trains and prunes (restored after): ``"auto"``
    (default) from the model's work per step (:func:`~netgeom.training.choose_threads`), an integer, or
    ``None`` to leave torch's setting; ``num_threads`` is its older name. It changes rounding only, so a run
    directory records the count and the device it was started with: a resume with ``"auto"`` uses that
    count, and another explicit count or device is refused while levels are left to train.

    A ``protect`` callback changes which weights are pruned, so it is part of the experiment: its name
    (``protect_name``, default ``module.qualname`` of the callable) is written into the description under
    ``"protect"`` and so into the run directory's hash. Without that, a topology-preserving run would
    silently reload the levels of a plain run of the same config. Lambdas, local functions and partials have
    no stable name: give ``protect_name`` for them when ``out_dir`` is set.

    The run directory records the code identity it is written with (``code``, default
    :func:`~netgeom.pruning.runs.code_identity` of netgeom; a caller whose own code shapes the run, such as a
    subclass in an experiment script, passes ``code_identity(its_directory)``); reopening it with other code
    raises :class:`~netgeom.pruning.runs.CodeMismatchError`; :func:`read_run` reads a finished run of other
    code read-only, with that code's identity attached.
    """

    def __init__(
        self,
        config: IMPConfig,
        out_dir: str | Path | None = None,
        protect: ProtectFn | None = None,
        verbose: bool = True,
        *,
        device: str | torch.device = "cpu",
        data=None,
        callback: LevelCallback | None = None,
        threads: int | str | None = "auto",
        protect_name: str | None = None,
        in_memory: bool | None = None,
        num_threads: int | None = None,
        code: Mapping[str, Any] | None = None,
    ):
        if not isinstance(config, IMPConfig):
            raise TypeError(f"config must be an IMPConfig, got {type(config).__name__}")
        if protect is not None and not callable(protect):
            raise TypeError("protect must be a callable protect(model, masks) -> masks")
        self.description = config.to_dict()
        if config.protect is not None:
            # a config rebuilt from a protected run's description: the same experiment needs its callback
            if protect is None:
                raise TypeError(
                    f"config describes a run with protect={config.protect!r}: pass that callback, "
                    "IMP(config, protect=fn), or a config without protect for an unprotected run"
                )
            if protect_name is not None and protect_name != config.protect:
                raise ValueError(
                    f"protect_name {protect_name!r} differs from config.protect {config.protect!r}"
                )
        elif protect is not None:
            self.description["protect"] = _protect_name(protect, protect_name, out_dir is not None)
        elif protect_name is not None:
            raise ValueError("protect_name given without a protect callback")
        self.config = config
        self.protect = protect
        self.verbose = check_bool(verbose, "verbose")
        self.device = device
        self.callback = callback
        self.in_memory = in_memory
        if data is not None:
            data = TrainingData.from_any(data, in_memory=in_memory)
            self._check_inputs(data)
        self._data = data
        self.threads = _threads_alias(threads, num_threads)
        if self.threads is not None and self.threads != "auto":
            self.threads = check_int(self.threads, "threads", minimum=1)
        if code is not None and out_dir is None:
            raise ValueError("code= is the identity a run directory records; it needs out_dir")
        self.run_dir = None if out_dir is None else RunDir(out_dir, self.description, prefix="imp", code=code)

    # ------------------------------------------------------------------ helpers
    def _build(self) -> nn.Module:
        return self.config.build_model()

    def _check_inputs(self, data: TrainingData) -> None:
        """Fail before any training (or run directory) when the model cannot take the data's samples: the
        input-shape rule of :mod:`netgeom.training` applied to one sample of each split."""
        model = self._build()
        for what, split in (("training inputs", data.train), ("test inputs", data.test)):
            try:
                conform_inputs(model, split.first(), what)
            except ValueError as exc:
                raise ValueError(f"IMPConfig.model {dict(self.config.model)!r} does not fit data "
                                 f"{dict(self.config.data)!r}: {exc}") from None

    def _prune(self, model: nn.Module, masks: Masks, level: int) -> Masks:
        cfg = self.config
        # the target is computed from the level, (1-q)^r of all weights, so rounding never accumulates
        kw = dict(
            sparsity=1.0 - cfg.level_density(level), scope=cfg.scope, protect=self.protect, masks=masks,
            include_output=cfg.include_output, relative_to="all",
        )
        if cfg.prune == "random":
            return random_prune(model, seed=cfg.seed * 1_000_003 + level, **kw)
        return magnitude_prune(model, **kw)

    def _rewind_step(self, spe: int) -> int:
        rw = self.config.rewind
        if not isinstance(rw, tuple):
            return 0
        step = rw[1] * spe if rw[0] == "epoch" else rw[1]
        if step >= self.config.train.epochs * spe:
            n = self.config.train.epochs * spe
            raise ValueError(f"rewind point {rw} is at or after the end of training ({n} iterations)")
        return step

    def _record(self, level, masks, trainer, elapsed) -> IMPLevel:
        h = trainer.history
        fin = h.final()
        return IMPLevel(
            level=level,
            sparsity=masks.sparsity(),
            density=masks.density(),
            n_kept=masks.n_kept(),
            layer_sparsity={k: 1.0 - d for k, d in masks.layer_densities().items()},
            train_loss=fin["train_loss"], train_acc=fin["train_acc"],
            test_loss=fin["test_loss"], test_acc=fin["test_acc"],
            seed=self.config.seed,
            time=elapsed,
            masks=masks,
            weights={k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
            history=h,
        )

    def _load_level(self, level: int) -> IMPLevel:
        return _load_level(self.run_dir, level, self._build())

    def _save_level(self, lv: IMPLevel) -> None:
        rd = self.run_dir
        d = f"level_{lv.level}"
        rd.save_masks(f"{d}/masks.npz", lv.masks)
        lv.weights_path = str(rd.save_tensors(f"{d}/weights.pt", lv.weights))
        rec = lv.to_dict()
        rec["history"] = lv.history.to_dict()
        rd.save_json(f"{d}/record.json", rec)  # written last: marks the level complete
        rd.remove(f"{d}/trainer.pt")

    # ------------------------------------------------------------------ main loop
    def run(self) -> IMPResult:
        # the run directory's lock is held while it is read and written: a second process on the same run
        # waits, then reads the finished levels back (see netgeom.pruning.runs)
        with run_lock(self.run_dir):
            return self._run()

    def _run(self) -> IMPResult:
        cfg, rd = self.config, self.run_dir
        data = self._data
        if data is None:
            try:
                data = TrainingData.from_any(load_dataset(cfg.data))
            except ValueError as exc:
                if "unknown data set" not in str(exc):
                    raise
                raise ValueError(f"{exc}; to train on your own data, hand them in: IMP(..., data=...)"
                                 ) from None
        self._check_inputs(data)
        if rd is not None:
            self._check_data(rd, data)
        self._threads = resolve_threads(self.threads, self._build(), data.train.first(),
                                        cfg.train.batch_size)
        if rd is not None:
            self._threads = self._check_numerics(rd)
        with torch_threads(self._threads):
            return self._run_levels(data)

    def _run_levels(self, data: TrainingData) -> IMPResult:
        from tqdm.auto import tqdm

        cfg, rd = self.config, self.run_dir
        levels: list[IMPLevel] = []
        init_state = {k: v.detach().clone() for k, v in self._build().state_dict().items()}
        rewind_state: dict[str, torch.Tensor] | None = None
        if rd is not None and rd.exists("rewind.pt"):
            rewind_state = rd.load_tensors("rewind.pt", like=init_state)
        masks = Masks.ones(self._build(), include_output=cfg.include_output)
        bar = tqdm(range(cfg.rounds + 1), desc="IMP", unit="level", disable=not self.verbose)
        try:
            for level in bar:
                if rd is not None and rd.exists(f"level_{level}/record.json"):
                    levels.append(self._load_level(level))
                    masks = levels[-1].masks
                    continue
                model = self._build()
                if level > 0:
                    model.load_state_dict(levels[-1].weights)
                    if rd is not None and rd.exists(f"level_{level}/masks_start.npz"):
                        masks = rd.load_masks(f"level_{level}/masks_start.npz", model)
                    else:
                        masks = self._prune(model, levels[-1].masks, level)
                        if rd is not None:
                            rd.save_masks(f"level_{level}/masks_start.npz", masks)
                levels.append(self._train_level(level, model, masks, data, init_state, rewind_state))
                if level == 0 and cfg.rewind not in ("init", "lr"):
                    rewind_state = self._captured
                bar.set_postfix(sparsity=f"{levels[-1].sparsity:.3f}", test_acc=f"{levels[-1].test_acc:.3f}")
        finally:
            bar.close()
        path = str(rd.path) if rd is not None else None
        return IMPResult(config=dict(self.description), levels=levels, run_dir=path, model_fn=cfg.model_fn,
                         code=dict(rd.code) if rd is not None else code_identity())

    def _check_numerics(self, rd: RunDir) -> int | None:
        """The thread count and device decide the rounding of every training step, so a run resumes on the
        ones it was started with (bit-identical levels): recorded on the first run; a resume with
        ``threads="auto"`` takes the recorded count (``"auto"`` depends on the machine's cores), an explicit
        other count or another device is refused while levels are left to train. Returns the threads to
        use."""
        threads = self._threads if self._threads is not None else torch.get_num_threads()
        now = {"threads": threads, "device": str(torch.device(self.device))}
        if not rd.exists("numerics.json"):
            rd.save_json("numerics.json", now)
            return self._threads
        old = rd.load_json("numerics.json", {"threads": int, "device": str})
        if old == now or all(rd.exists(f"level_{lv}/record.json") for lv in range(self.config.rounds + 1)):
            return self._threads  # (a finished run is only read back)
        if old["device"] != now["device"]:
            raise ValueError(
                f"run {rd.path} was started on device {old['device']!r}, and device={now['device']!r} now: "
                "its remaining levels would round differently from its finished ones; resume it on "
                f"device={old['device']!r}, or use another out_dir"
            )
        if self.threads == "auto":
            return old["threads"]
        raise ValueError(
            f"run {rd.path} was started with {old['threads']} torch thread(s), and threads={threads} now: "
            "the thread count changes the rounding of every training step, so the resumed levels would match "
            f"neither an uninterrupted run; resume with threads={old['threads']} (or 'auto'), or use another "
            "out_dir"
        )

    @staticmethod
    def _check_data(rd: RunDir, data: TrainingData) -> None:
        """A run directory is named by the description of its data, not by the data: record a fingerprint
        of the data on the first run and refuse to resume a run with different data (a changed loader or
        a data set handed in that does not match ``config.data``). The fingerprint is the same for the same
        samples in any form (tensors, a torch Dataset in memory or streamed)."""
        fp = data.fingerprint()
        if rd.exists("data_fingerprint.json"):
            old = rd.load_json("data_fingerprint.json", {"sha256": str, "n_train": int, "n_test": int})
            if old != fp:
                raise ValueError(
                    f"the data differ from the data run {rd.path} was started with (fingerprint {old} there, "
                    f"{fp} now): pass the data set that config.data describes, or use another out_dir"
                )
        else:
            rd.save_json("data_fingerprint.json", fp)

    def _train_level(self, level, model, masks, data, init_state, rewind_state) -> IMPLevel:
        cfg, rd = self.config, self.run_dir
        rw = cfg.rewind
        start_step = 0
        trainer_ckpt = f"level_{level}/trainer.pt"
        self._captured = rewind_state
        resume = rd is not None and rd.exists(trainer_ckpt)
        if level > 0 and not resume:
            if rw == "init":
                model.load_state_dict(init_state)
            elif isinstance(rw, tuple):
                if rewind_state is None:
                    raise RuntimeError("weight rewinding needs the weights saved at the rewind point")
                model.load_state_dict(rewind_state)
            # rw == "lr": keep the trained weights of the previous level; the new Trainer replays the schedule
        spe = -(-data.train.n // cfg.train.batch_size)
        if level > 0 and isinstance(rw, tuple):
            start_step = self._rewind_step(spe)
        trainer = Trainer(model, data, cfg.train, masks=masks, device=self.device, verbose=self.verbose,
                          start_step=start_step, threads=self._threads)
        k = self._rewind_step(spe) if level == 0 and isinstance(rw, tuple) else None
        if resume:
            with rd.reading(trainer_ckpt):
                trainer.load_state_dict(rd.load_tensors(trainer_ckpt))
        elif k == 0:
            self._capture(trainer)

        def on_event(event: str, tr: Trainer) -> None:
            if k is not None and event == "step" and tr.step == k:
                self._capture(tr)
            if event == "epoch" and rd is not None and not tr.done:
                rd.save_tensors(trainer_ckpt, tr.state_dict())
            if self.callback is not None:
                self.callback(level, event, tr)

        trainer.callback = on_event
        if self.callback is not None and not resume:
            self.callback(level, "start", trainer)
        trainer.run()
        # the epochs' own times (restored from the checkpoint when resumed), so a resumed level reports the
        # same kind of time as an uninterrupted one
        lv = self._record(level, masks, trainer, trainer.history.total_time)
        if rd is not None:
            self._save_level(lv)
        return lv

    def _capture(self, trainer: Trainer) -> None:
        self._captured = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        if self.run_dir is not None:
            self.run_dir.save_tensors("rewind.pt", self._captured)


# ---------------------------------------------------------------------- CLI
def _json_or_name(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {text!r} ({exc})") from None
    return {"name": text}


def _threads_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads must be 'auto' or a positive integer, got {text!r}")
    cores = os.cpu_count() or 1
    if n > 4 * cores:
        raise argparse.ArgumentTypeError(f"--threads {n} is more than 4x the {cores} cores of this machine")
    return n


def _seed_arg(text: str) -> int:
    from ..cli import _seed  # the one seed check of the command line (cli imports this module)

    return _seed(text)


def imp_main(argv: Sequence[str] | None = None) -> int:
    """``netgeom imp``: run IMP from the command line and print a level table (JSON with ``--json``)."""
    from ..cli import UsageError, check_mlp_memory, cli_parser, device_option, widths_option

    p = cli_parser("netgeom imp", "Iterative magnitude pruning with rewinding.")  # defaults in --help
    p.add_argument("--model", default="mlp", help="model name, a factory 'package.module:function', or a "
                   "JSON description such as '{\"factory\": \"mypkg.models:resnet20\", \"num_classes\": 10}' "
                   "(default: mlp)")
    p.add_argument("--widths", default=None, type=widths_option,
                   help="hidden widths for --model mlp (default: 100,100); refused with another model or an "
                   "MLP description that gives its own widths")
    p.add_argument("--data", default="mnist1d", help="data set name or JSON description (default: mnist1d)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--q", type=float, default=0.2, help="fraction of remaining weights pruned per round")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "linear", "step"])
    p.add_argument("--rewind", default="init", help="init | lr | epoch:K | iteration:K")
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument("--keep-output", action="store_true", help="leave the classifier layer dense")
    p.add_argument("--random", action="store_true", help="random pruning baseline instead of magnitude")
    p.add_argument("--seed", type=_seed_arg, default=0)
    p.add_argument("--device", default="cpu", type=device_option, help="cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=_threads_arg, default="auto",
                   help="torch intra-op threads: 'auto' (default; from the work per training step, 1 for "
                   "MLPs and LeNets) or a positive integer")
    p.add_argument("--out", default="runs/imp", help="root directory of run directories (default: runs/imp)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)

    data_desc = _json_or_name(args.data)
    model_desc = _json_or_name(args.model)
    if "name" in model_desc and ":" in model_desc["name"]:
        model_desc = {"factory": model_desc["name"]}  # --model mypkg.models:resnet20
    is_mlp = model_desc.get("name") == "mlp"
    if args.widths is not None and (not is_mlp or "widths" in model_desc):
        # it would be dropped without a word
        raise UsageError(
            f"--widths is for --model mlp only, not {args.model!r}" if not is_mlp else
            f"--widths given, but the --model description has its own widths {model_desc['widths']}; "
            "give them once"
        )
    if model_desc.get("name") == "mlp" and not {"n_in", "n_out"} <= set(model_desc):
        data_desc.setdefault("flat", True)
        ds = load_dataset(data_desc)
        model_desc.setdefault("n_in", ds.n_features)
        model_desc.setdefault("n_out", ds.n_classes)
        model_desc.setdefault("widths", args.widths or [100, 100])
        check_mlp_memory([model_desc["n_in"], *model_desc["widths"]], model_desc["n_out"], "--widths")
    else:
        ds = None
        if args.widths is not None:  # an MLP description with n_in and n_out but no widths
            model_desc["widths"] = args.widths
    config = IMPConfig(
        model=model_desc, data=data_desc,
        train=TrainConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer,
            schedule=args.schedule,
        ),
        q=args.q, rounds=args.rounds, rewind=parse_rewind(args.rewind), scope=args.scope,
        include_output=not args.keep_output, prune="random" if args.random else "magnitude", seed=args.seed,
    )
    res = IMP(config, out_dir=args.out, verbose=not args.quiet, device=args.device, data=ds,
              threads=args.threads).run()
    _print_result(res, args.json)
    return 0


def _print_result(res: IMPResult, as_json: bool = False) -> None:
    """The command line's report of an IMP result: its JSON, or its run directory, code note and level
    table (``netgeom imp`` and ``netgeom read``)."""
    if as_json:
        print(res.to_json())
        return
    print(f"run directory: {res.run_dir}")
    if res.code_note is not None:
        print(res.code_note)
    if not res.complete:
        print(f"incomplete: levels {len(res.levels)}..{res.config['rounds']} are not finished")
    print(f"{'level':>5} {'sparsity':>9} {'train_acc':>9} {'test_acc':>9} {'time_s':>7}")
    for lv in res.levels:
        print(f"{lv.level:>5} {lv.sparsity:>9.4f} {lv.train_acc:>9.4f} {lv.test_acc:>9.4f} {lv.time:>7.2f}")


# ---------------------------------------------------------------------- demo
def demo_imp(
    data, seed: int = 0, out_dir: str | Path | None = None, quick: bool = True, verbose: bool = False
):
    """A short IMP run for the demo report on a flat data set (e.g. MNIST-1D): a ``n_in-100-100-n_classes``
    MLP, SGD (lr 0.1, batch 64) with cosine schedule, LR rewinding, 20% per round (``quick``: 10 rounds x 20
    epochs, to 89% sparsity; else 15 rounds x 30 epochs, to 96%).

    Returns ``(dense_model, pruned_model, masks, levels)``: the trained dense network (level 0), the last
    level's masked network, its masks and the list of :class:`IMPLevel` records.
    """
    if len(data.input_shape) != 1:
        raise ValueError(f"demo_imp needs flat data (use data.flat()), got input shape {data.input_shape}")
    data_desc = {"name": data.name, **{k: v for k, v in data.meta.items() if k != "seed"},
                 "seed": data.meta.get("seed", seed)}
    config = IMPConfig(
        model={"name": "mlp", "n_in": data.n_features, "widths": [100, 100], "n_out": data.n_classes},
        data=data_desc,
        train=TrainConfig(
            epochs=20 if quick else 30, lr=0.1, momentum=0.9, batch_size=64, schedule="cosine"
        ),
        q=0.2, rounds=10 if quick else 15, rewind="lr", seed=seed,
    )
    res = IMP(config, out_dir=out_dir, verbose=verbose, data=data).run()
    return res.model_at(0), res.model_at(-1), res.levels[-1].masks, res.levels


def demo_section(ctx) -> str:
    """Demo report section: accuracy against sparsity for the IMP levels in ``ctx.imp_levels``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .prunability import prunability

    levels = list(ctx.imp_levels or [])
    lines = ["## Pruning: accuracy against sparsity (IMP)", ""]
    if not levels:
        lines.append("No IMP levels were recorded for this report.")
        return "\n".join(lines) + "\n"
    pr = prunability(levels)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pr.plot(ax=ax)
    ax.plot([100 * lv.sparsity for lv in levels], [lv.train_acc for lv in levels], "s--", alpha=0.6,
            label="train")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(ctx.out_dir) / "imp_accuracy.png", dpi=120)
    plt.close(fig)
    lines += [
        f"Iterative magnitude pruning, 20% of the remaining weights per round; {len(levels) - 1} rounds "
        f"(seed {levels[0].seed}).",
        "",
        "| level | sparsity | weights kept | train acc | test acc | test loss | time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv.level} | {lv.sparsity:.3f} | {lv.n_kept} | {lv.train_acc:.3f} | {lv.test_acc:.3f} | "
            f"{lv.test_loss:.3f} | {lv.time:.2f} |"
        )
    lines += [
        "",
        f"**Prunability** (largest sparsity with test accuracy ≥ dense − ε, ε = {pr.eps:.3g}): "
        f"{pr.prunability:.3f} (dense test accuracy {pr.dense_acc:.3f}).",
        "",
        "![IMP accuracy against sparsity](imp_accuracy.png)",
        "",
    ]
    return "\n".join(lines)
