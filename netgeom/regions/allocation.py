"""Choosing per-layer densities that maximise the sparsity-aware region bound (Cai et al. 2023).

Given a budget of kept weights ``B = total_density · Σ_l |W_l|`` over the pruned layers (the hidden layers;
the classifier stays dense unless ``prune_output=True``), :func:`allocate_densities` searches densities
``p_l ∈ (0, 1]`` with ``Σ_l p_l |W_l| = B`` that maximise :func:`~netgeom.regions.bounds.sparse_bound`.

* Two pruned layers: ``p_2`` follows from ``p_1``, so the whole feasible range of ``p_1`` is evaluated on a
  grid, then refined around the best grid point.
* More layers: coordinate search over the budget simplex. A move transfers a fraction of the budget from one
  layer to another (which keeps the budget exact); the best improving move is taken, and the step is halved
  when none improves.
* Points where a density leaves ``(0, 1]`` are infeasible and skipped.

A non-uniform allocation is returned only when its bound beats the uniform allocation's by more than a
relative tolerance: ``bound(chosen) > (1 + gain_rtol) · bound(uniform)`` (default ``gain_rtol = 1e-6``,
i.e. a gain of more than ``log10(1 + 1e-6) ≈ 4.3e-7`` in ``log10``). Gains below it are immaterial, and
gains below the float rounding of the recursion (``1e-12 · |ln bound|``, always enforced) are noise: without
the tolerance, a flat bound (every rank full with probability ≈ 1) picks arbitrary densities for a gain of
1e-14. The coordinate search takes a move only when it gains more than the same tolerance.

The authors' script (Cai et al. 2023, ``binomial_formula.py``) instead evaluates three points for two layers
and fits a parabola to ``ln(bound)``; the result records what that rule would have chosen. As in their code,
that rule always runs the recursion through the (dense) output layer, whatever ``include_output`` says for
netgeom's own search, so it needs the output width ``n_out`` (or a model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import field

import numpy as np
import torch

from .._validation import as_generator, check_bool, check_choice, check_fraction, check_int, check_widths
from ..nets import affine_layers
from ..pruning.masks import _prunable_names
from ..results import Result, new_axes
from .bounds import (
    _UNSET,
    ComposedLayer,
    _given,
    _n_kernel,
    _rank_options,
    _stacked_message,
    bounded_layers,
    sparse_bound,
)

__all__ = ["allocate_densities", "AllocationResult"]

_FEAS_TOL = 1e-12
_LN10 = math.log(10.0)
# Relative float rounding of the log-space recursion (measured ~1e-15; 1e-12 leaves a wide margin).
_NOISE_RTOL = 1e-12


@dataclasses.dataclass
class AllocationResult(Result):
    """Per-layer densities chosen to maximise the sparse region bound under a budget of kept weights.

    ``densities``/``sparsities`` are per pruned layer (hidden layers in order, then the classifier if
    ``prune_output``). ``budget`` is the number of kept weights ``Σ p_l |W_l|`` they use. ``evaluated`` is an
    ``(n_points, n_pruned)`` array of every feasible allocation tried and ``evaluated_log10`` the bound at
    each. ``densities`` differ from uniform only when ``log10`` beats ``uniform_log10`` by more than
    ``log10(1 + gain_rtol)`` (see the module docstring). ``authors_densities`` is what Cai et al.'s
    three-point Lagrange rule picks (two pruned layers and a known ``n_out`` only; None otherwise, with the
    reason in ``notes``); that rule runs through the output layer, and ``authors_ln`` is the ``ln`` bound it
    reports there (their ``ub_O``), while ``authors_log10`` is the bound of this search at those densities,
    comparable with ``log10``. ``param_names`` are the pruned layers' weight names when a model was given.
    Use :meth:`per_layer` to hand the allocation to ``magnitude_prune(model, per_layer=...)``.
    """

    n0: int
    widths: list[int]
    n_out: int | None
    total_density: float
    budget: float
    layer_sizes: list[int]
    densities: list[float]
    sparsities: list[float]
    log10: float
    uniform_log10: float
    authors_densities: list[float] | None
    authors_log10: float | None
    method: str
    n_evaluated: int
    param_names: list[str] | None = None
    output_param: str | None = None
    gain_rtol: float = 1e-6
    authors_ln: float | None = None
    notes: list[str] = field(default_factory=list)
    evaluated: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    evaluated_log10: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def per_layer(self, model: torch.nn.Module | None = None) -> dict[str, float] | list[float]:
        """Sparsities in the form ``magnitude_prune(model, per_layer=...)`` takes.

        With a ``model`` (or when the allocation was computed from one): ``{param_name: sparsity}`` for
        every prunable weight, the classifier at sparsity 0 unless it was pruned here. Without: the list
        of sparsities of every layer of the chain in order, hidden layers then the classifier (0 unless it
        was pruned here): the list form ``magnitude_prune`` takes, one entry per prunable layer in forward
        order (the order in which ``forward`` uses the weights, whatever order the modules were registered
        in; a list of the hidden layers alone was refused there).
        """
        if model is None:
            if self.param_names is None:
                dense_classifier = [0.0] if len(self.sparsities) == len(self.widths) else []
                return list(self.sparsities) + dense_classifier
            out = dict(zip(self.param_names, self.sparsities))
            if self.output_param is not None:
                out.setdefault(self.output_param, 0.0)
            return out
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layers = affine_layers(model)
        _require_no_stack(layers)
        widths = [la.n_out for la in layers[:-1]]
        if layers[0].n_in != self.n0 or widths != self.widths:
            raise ValueError(
                f"the model's widths {[layers[0].n_in, *widths]} differ from the allocation's "
                f"{[self.n0, *self.widths]}"
            )
        _require_linear(layers)
        names = [la.param_name for la in layers]
        if any(n is None for n in names):
            raise ValueError("every layer of the model must carry a weight to map sparsities onto it")
        out = dict(zip(names, self.sparsities))
        out.setdefault(names[-1], 0.0)
        known = set(_prunable_names(model))
        missing = sorted(set(out) - known)
        if missing:
            raise ValueError(f"parameters {missing} are not prunable weights of the model")
        return out

    def plot(self, ax=None):
        """Two pruned layers: log10 bound against ``p_1`` (evaluated points), with the uniform, chosen and
        authors' allocations marked. More layers: the bound at each evaluated point, in search order."""
        fig, ax = new_axes(ax)
        if len(self.layer_sizes) == 2 and len(self.evaluated):
            order = np.argsort(self.evaluated[:, 0])
            ax.plot(self.evaluated[order, 0], self.evaluated_log10[order], ".-", color="0.5",
                    label="evaluated")
            ax.axhline(self.uniform_log10, color="C0", ls="--", label=f"uniform p={self.total_density:.3g}")
            ax.plot([self.densities[0]], [self.log10], "o", color="C3", label="chosen")
            if self.authors_densities is not None:
                ax.plot([self.authors_densities[0]], [self.authors_log10], "s", mfc="none", color="C2",
                        label="authors' 3-point rule")
            ax.set_xlabel("density of layer 1 (p_1); p_2 follows from the budget")
        else:
            ax.plot(np.arange(len(self.evaluated_log10)), self.evaluated_log10, ".", color="0.5",
                    label="evaluated")
            ax.axhline(self.uniform_log10, color="C0", ls="--", label="uniform")
            ax.axhline(self.log10, color="C3", label="chosen")
            ax.set_xlabel("evaluation")
        ax.set_ylabel("log10 sparse bound")
        # A flat bound (e.g. a dense enough budget) would get an unreadable offset label like
        # "1e-6+1.2041199e2"; plain tick labels stay readable.
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_title(f"allocation at total density {self.total_density:.3g}")
        ax.legend(fontsize="small")
        return ax


def _require_no_stack(layers) -> None:
    """Refuse layers with no activation between them (they are one affine map for the bound)."""
    from .bounds import _compose

    stacked = [la for la in _compose(layers) if isinstance(la, ComposedLayer)]
    if stacked:
        raise ValueError(
            f"allocate_densities gives each weight matrix of a ReLU chain a density, but "
            f"{_stacked_message(stacked[0])}: the bound sees their product, whose rank the random-mask model "
            "of one matrix does not describe, so no allocation is proved for it. Insert the missing "
            "activation, or bound the pruned net with sparse_bound(model=..., rank_model=\"masks\")"
        )


def _require_linear(layers) -> None:
    # The budget counts the weights of dense matrices; a convolution's unrolled matrix repeats a small kernel
    # (LeNet-5's first: 150 weights, unrolled 3456 x 784), so neither the budget nor the sparsities would
    # mean the kernel's.
    conv = [la for la in layers if la.kind != "linear"]
    if conv:
        la = conv[0]
        raise ValueError(
            f"allocate_densities works on Linear layers only; layer '{la.name}' is a {la.kind} layer whose "
            f"kernel has {_n_kernel(la)} weights but unrolls to a {tuple(la.weight.shape)} matrix, so the "
            "closed-form rank model and the weight budget do not apply to it. For a bound on the pruned conv "
            'net use sparse_bound(model=..., rank_model="masks")'
        )


def _feasible(p: np.ndarray) -> bool:
    return bool(np.all(p > 0) and np.all(p <= 1 + _FEAS_TOL))


def allocate_densities(
    n0: int | None = None,
    widths: Sequence[int] | None = None,
    total_density: float = 0.1,
    *,
    n_out: int | None = None,
    model: torch.nn.Module | None = None,
    prune_output: bool = False,
    include_output: bool = False,
    rank_model: str = "closed_form",
    include_zero_rank: bool = _UNSET,
    n_grid: int = _UNSET,
    refine_steps: int = _UNSET,
    max_iter: int = _UNSET,
    tol: float = _UNSET,
    seed: int | None = None,
    n_samples: int = _UNSET,
    input_shape: Sequence[int] | None = None,
    gain_rtol: float = 1e-6,
    verbose: bool = True,
) -> AllocationResult:
    """Per-layer densities maximising the sparse region bound for a total budget of kept weights.

    Parameters
    ----------
    n0, widths : input dimension and hidden widths (or give ``model``: they and ``n_out`` are read from it).
    total_density : kept fraction of the pruned layers' weights together, in ``(0, 1]``.
    prune_output : also give the classifier a density from the budget (needs ``n_out``); the bound then runs
        through the output layer (``include_output`` is implied). Default False: the classifier stays dense,
        as in Cai et al., and is not part of the budget.
    include_output : run the bound through the (dense) output layer, as the authors' code does.
    rank_model : ``"closed_form"`` (fast, default) or ``"monte_carlo"`` (needs ``seed``; slow).
    include_zero_rank : closed form only (default False, as :func:`~netgeom.regions.bounds.sparse_bound`).
    seed, n_samples : Monte Carlo only (``n_samples`` defaults to 32).
    n_grid, refine_steps : grid size over ``p_1`` and rounds of refinement (defaults 41 and 4); exactly two
        pruned layers only.
    max_iter, tol : coordinate search (three or more pruned layers only): moves and the smallest step, as a
        fraction of the budget (defaults 200 and 1e-4).
    input_shape : one sample's shape, passed to :func:`netgeom.nets.affine_layers` with ``model`` (refused
        without one).

    Every option is validated when given; one that the chosen rank model or the number of pruned layers
    does not use is refused rather than ignored. A model whose layers have no activation between them is
    refused, naming them: its weight budget is per matrix, but its bound per composite map
    (:func:`~netgeom.regions.bounds.bounded_layers`), and the random-mask rank model does not describe a
    product of masked matrices.
    gain_rtol : relative tolerance, ``>= 0``: uniform densities are kept unless another allocation's bound is
        larger by a factor of more than ``1 + gain_rtol`` (module docstring).
    verbose : progress bar over the evaluations with ``rank_model="monte_carlo"`` (each samples ranks).

    >>> r = allocate_densities(784, [100, 100], 0.01)
    >>> abs(sum(p * s for p, s in zip(r.densities, r.layer_sizes)) - r.budget) < 1e-6 * r.budget
    True
    >>> r.log10 >= r.uniform_log10
    True
    """
    prune_output = check_bool(prune_output, "prune_output")
    include_output = check_bool(include_output, "include_output")
    verbose = check_bool(verbose, "verbose")
    names: list[str] | None = None
    out_name: str | None = None
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layers = bounded_layers(model, input_shape=input_shape)
        _require_no_stack(layers)
        if layers[-1].activation != "identity":
            # The bound would count that layer as hidden while the budget treats it as the classifier.
            raise ValueError(
                f"allocate_densities needs an affine output layer (classifier); the model's last layer "
                f"'{layers[-1].name}' has a {layers[-1].activation} activation"
            )
        _require_linear(layers)
        m_n0, m_widths, m_out = layers[0].n_in, [la.n_out for la in layers[:-1]], layers[-1].n_out
        for given, actual, nm in ((n0, m_n0, "n0"), (n_out, m_out, "n_out")):
            if given is not None and given != actual:
                raise ValueError(f"{nm}={given} disagrees with the model's {nm}={actual}")
        if widths is not None and list(widths) != m_widths:
            raise ValueError(f"widths={list(widths)} disagrees with the model's hidden widths {m_widths}")
        n0, widths, n_out = m_n0, m_widths, m_out
        all_names = [la.param_name for la in layers]
        if any(n is None for n in all_names):
            raise ValueError("every layer of the model must carry a weight to allocate densities to it")
        names, out_name = all_names[:-1], all_names[-1]
        if prune_output:
            names = all_names
    elif input_shape is not None:
        raise ValueError("input_shape is read only with a model (model=...); it would be ignored")
    if n0 is None or widths is None:
        raise ValueError("give n0 and widths (hidden layer widths), or a model")
    n0 = check_int(n0, "n0", minimum=1)
    widths = check_widths(widths, "widths", min_len=1)
    total_density = check_fraction(total_density, "total_density", low=0.0, high=1.0, low_inclusive=False)
    check_choice(rank_model, "rank_model", ("closed_form", "monte_carlo"))
    # Rank-model options: validated and refused where they do not apply, by the bound's own rule, once here.
    if n_samples is _UNSET and rank_model == "monte_carlo":
        n_samples = 32
    include_zero_rank, n_samples, _ = _rank_options(rank_model, include_zero_rank, n_samples, seed, _UNSET)
    if rank_model == "monte_carlo":
        as_generator(seed)  # a missing seed is refused before any evaluation
    rank_opts = (
        {"include_zero_rank": include_zero_rank} if rank_model == "closed_form"
        else {"seed": seed, "n_samples": n_samples}
    )
    n_pruned = len(widths) + (1 if prune_output else 0)
    grid_opts = _given(n_grid=n_grid, refine_steps=refine_steps)
    search_opts = _given(max_iter=max_iter, tol=tol)
    unused = (
        grid_opts + search_opts if n_pruned == 1 else search_opts if n_pruned == 2 else grid_opts
    )
    if unused:
        raise ValueError(
            f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply with {n_pruned} pruned "
            "layer(s) and would be ignored: n_grid and refine_steps set the grid over p_1 for exactly two "
            "pruned layers, max_iter and tol the coordinate search for three or more"
        )
    n_grid = check_int(41 if n_grid is _UNSET else n_grid, "n_grid", minimum=4)
    refine_steps = check_int(4 if refine_steps is _UNSET else refine_steps, "refine_steps", minimum=0)
    max_iter = check_int(200 if max_iter is _UNSET else max_iter, "max_iter", minimum=1)
    tol = check_fraction(1e-4 if tol is _UNSET else tol, "tol", low=0.0, high=1.0, low_inclusive=False)
    gain_rtol = float(gain_rtol)
    if not (math.isfinite(gain_rtol) and gain_rtol >= 0):
        raise ValueError(f"gain_rtol must be a finite number >= 0, got {gain_rtol!r}")
    if prune_output or include_output:
        if n_out is None:
            raise ValueError("prune_output/include_output need n_out (the output width) or a model")
        n_out = check_int(n_out, "n_out", minimum=1)
    ins = [n0, *widths]
    outs = list(widths) + ([n_out] if prune_output else [])
    sizes = [i * o for i, o in zip(ins, outs)]
    budget = total_density * sum(sizes)
    bound_widths = list(widths) + ([n_out] if (prune_output or include_output) else [])

    from tqdm.auto import tqdm

    cache: dict[tuple[float, ...], float] = {}
    auth_cache: dict[tuple[float, ...], float] = {}
    bar = tqdm(desc="allocation", unit="bound", disable=not (verbose and rank_model == "monte_carlo"))

    def bound(p: np.ndarray, through_output: bool):
        dens = [min(float(x), 1.0) for x in p]
        out_dens = dens[-1] if prune_output else 1.0
        hidden = dens[: len(widths)]
        bar.update(1)
        if prune_output:
            dists = [
                _dist(n, i, d, rank_model, rank_opts)
                for n, i, d in zip(bound_widths, [n0, *bound_widths[:-1]], hidden + [out_dens])
            ]
            return sparse_bound(
                n0, widths, hidden, rank_model=dists, include_output=True, n_out=n_out, verbose=False
            )
        return sparse_bound(
            n0, widths, hidden, rank_model=rank_model, include_output=through_output,
            n_out=n_out if through_output else None, verbose=False, **rank_opts,
        )

    # Two values per point: the reported bound (at least one region) that the search maximises, and the
    # recursion's own value, which the authors' rule compares as their script does.
    raw: dict[tuple[float, ...], float] = {}

    def f(p: np.ndarray) -> float:
        key = tuple(np.round(p, 15))
        if key not in cache:
            r = bound(p, include_output)
            cache[key], raw[key] = r.log10, r.unclamped_log10
        return cache[key]

    def f_authors(p: np.ndarray) -> float:
        """ln of the bound through the output layer, as the authors' script evaluates it (unclamped)."""
        key = tuple(np.round(p, 15))
        if key not in auth_cache:
            value = raw[key] if include_output and key in raw else bound(p, True).unclamped_log10
            auth_cache[key] = value * _LN10
        return auth_cache[key]

    uniform = np.full(len(sizes), total_density)
    uniform_val = f(uniform)
    # log10 margins: the caller's tolerance, and never less than the recursion's float rounding.
    noise = _NOISE_RTOL * abs(uniform_val)
    margin = max(math.log1p(gain_rtol) / _LN10, noise)
    points: list[np.ndarray] = [uniform]
    authors_p = authors_val = authors_ln = None
    notes: list[str] = []

    if len(sizes) == 1 or total_density >= 1.0:
        best, method = uniform, "uniform (single pruned layer or no pruning)"
    elif len(sizes) == 2:
        s1, s2 = sizes
        lo, hi = max(0.0, (budget - s2) / s1), min(1.0, budget / s1)

        def pair(p1: float) -> np.ndarray:
            return np.array([p1, (budget - p1 * s1) / s2])

        grid = np.linspace(lo, hi, n_grid)
        cand = [pair(x) for x in grid]
        points += [c for c in cand if _feasible(c)]
        step = (hi - lo) / (n_grid - 1)
        for _ in range(refine_steps):
            vals = [f(p) for p in points]
            centre = points[int(np.argmax(vals))][0]
            fine = np.linspace(centre - step, centre + step, 11)
            points += [c for c in (pair(x) for x in fine) if _feasible(c)]
            step /= 5.0
        if n_out is None:
            notes.append(
                "authors' three-point rule not evaluated: it runs the recursion through the output layer, as "
                "their code does, and the output width n_out was not given"
            )
        elif not prune_output:
            authors_p, authors_ln = _authors_rule(f_authors, pair, lo, hi, total_density)
            authors_val = f(np.array(authors_p))
        method = f"grid of {n_grid} over p_1, {refine_steps} refinements"
        best = None
    else:
        best, explored = _coordinate_search(
            f, uniform, np.array(sizes, float), budget, max_iter, tol, margin
        )
        points += explored
        method = "coordinate search over the budget simplex"

    vals = np.array([f(p) for p in points])
    bar.close()
    if best is None:
        best = points[int(np.argmax(vals))]
    gain = f(best) - uniform_val
    if gain <= margin and not np.array_equal(best, uniform):
        method += (
            f"; uniform kept: the best allocation gains {gain:.3g} in log10, within the tolerance "
            f"{margin:.3g} (gain_rtol={gain_rtol:g})"
        )
        best = uniform
    best = np.minimum(best, 1.0)
    sparsities = [float(1.0 - p) for p in best]
    return AllocationResult(
        n0=n0,
        widths=list(widths),
        n_out=n_out,
        total_density=total_density,
        budget=float(budget),
        layer_sizes=sizes,
        densities=[float(p) for p in best],
        sparsities=sparsities,
        log10=f(best),
        uniform_log10=uniform_val,
        authors_densities=authors_p,
        authors_log10=authors_val,
        method=method,
        n_evaluated=len(cache),
        param_names=names,
        output_param=None if prune_output else out_name,
        evaluated=np.array(points),
        evaluated_log10=vals,
        gain_rtol=gain_rtol,
        authors_ln=authors_ln,
        notes=notes,
    )


def _dist(n: int, n_in: int, p: float, rank_model: str, rank_opts: dict):
    from .bounds import rank_distribution

    return rank_distribution(n, n_in, p, rank_model=rank_model, verbose=False, **rank_opts)


def _authors_rule(f_ln, pair, lo: float, hi: float, total_density: float) -> tuple[list[float], float]:
    """Cai et al.'s rule, as their ``binomial_formula.py`` runs it: a 12-point grid over the feasible ``p_1``
    range; ``ln(bound)`` (through the output layer) at the second grid point, the uniform allocation and
    the second-to-last grid point; the stationary point of the parabola through them is taken when it lies
    strictly between the second and second-to-last grid points and its bound beats the uniform one.

    Their bound is evaluated in exact decimals, ours in floats: a "beats" within the float rounding
    (``1e-12 · |ln|``) is not counted. Returns ``(densities, ln bound)``.
    """
    g = np.linspace(lo, hi, 12)
    xs = np.array([g[1], total_density, g[-2]])
    uniform = pair(total_density)
    u_ln = f_ln(uniform)
    if len(np.unique(xs)) < 3 or not all(_feasible(pair(x)) for x in xs):
        return [float(v) for v in uniform], u_ln
    ys = np.array([f_ln(pair(x)) for x in xs])
    # Fitted in u = (x − g_1) / (g_{-2} − g_1), where the three points lie in [0, 1]: at densities of 1e-250
    # a fit in x itself has a singular scale (the stationary point maps back exactly: a parabola in x is one
    # in u).
    span = g[-2] - g[1]
    a, b, _ = np.polyfit((xs - g[1]) / span, ys, 2)
    if a != 0:
        x_star = g[1] + span * (-b / (2 * a))
        cand = pair(x_star)
        if g[1] < x_star < g[-2] and _feasible(cand):
            v = f_ln(cand)
            if v - u_ln > _NOISE_RTOL * abs(u_ln):
                return [float(v) for v in np.minimum(cand, 1.0)], v
    return [float(v) for v in uniform], u_ln


def _coordinate_search(
    f, start: np.ndarray, sizes: np.ndarray, budget: float, max_iter: int, tol: float, margin: float
):
    """Pairwise budget transfers: move ``step · budget`` kept weights from layer ``j`` to layer ``i``; a
    move is taken only when it raises ``log10`` by more than ``margin``."""
    x, fx = start.copy(), f(start)
    explored: list[np.ndarray] = []
    step = 0.25
    it = 0
    L = len(sizes)
    while step >= tol and it < max_iter:
        it += 1
        best_move, best_val = None, fx
        for i in range(L):
            for j in range(L):
                if i == j:
                    continue
                y = x.copy()
                y[i] += step * budget / sizes[i]
                y[j] -= step * budget / sizes[j]
                if not _feasible(y):
                    # Clip the transfer to what layer i can still take (p ≤ 1) before giving up.
                    room = (1.0 - x[i]) * sizes[i]
                    give = min(step * budget, room, x[j] * sizes[j] * (1 - 1e-9))
                    if give <= 0:
                        continue
                    y = x.copy()
                    y[i] += give / sizes[i]
                    y[j] -= give / sizes[j]
                    if not _feasible(y):
                        continue
                explored.append(y)
                v = f(y)
                if v > best_val + margin:
                    best_move, best_val = y, v
        if best_move is None:
            step /= 2.0
        else:
            x, fx = best_move, best_val
    return x, explored
