"""One-step pruning rules: magnitude (global or layerwise) and random, with protected weights.

**The rules return masks; they do not change the model.** Right after ``m = magnitude_prune(net, 0.5)`` the
network is still dense, and evaluating it gives the dense accuracy. Zero the pruned weights with
``m.apply(net)`` (in place), or pass ``apply=True`` to the rule; the analyses take the masks themselves
(``masks=m``), and training keeps them exact (``train(..., masks=m)``).

Both rules share one signature and one accounting:

- ``masks``: the current masks; already-pruned weights stay pruned (the result is nested in ``masks``).
- ``relative_to="remaining"`` (IMP convention): remove ``round(sparsity * n_remaining)`` weights;
  ``relative_to="all"`` (one-shot convention): keep ``round((1 - sparsity) * n_all)`` weights in total.
  Counts are exact integers, so density after a rule is known to the weight.
- ``scope="global"`` (default with ``sparsity``): one pool over all prunable tensors; ``"layer"``: the same
  fraction in every tensor (``per_layer`` with ``scope="global"`` is refused: they contradict each other);
  ``per_layer``: a fraction per tensor (``{param_name: sparsity}`` or a list in forward order, the order of
  :func:`~netgeom.pruning.prunable_parameters`, e.g. ``allocate_densities(...).per_layer(model)``, whose
  fractions are of all weights: pair it with ``relative_to="all"`` when ``masks`` already prune); tensors
  absent from the dict are left as they are.
- ``include_output=False`` leaves the output layer (the last weight ``forward`` uses) as it is.
- ``protect(model, masks) -> {param_name: bool tensor}``: weights that must stay. The rule chooses only among
  the others and raises :class:`UnreachableSparsityError` when it cannot remove enough.
- Ties (equal magnitudes) are broken by position (flattened tensor order, tensors in forward order), so the
  result is deterministic. A model whose forward ``torch.fx`` cannot trace has no known forward order: list
  forms and ``include_output=False`` are refused for it, naming the cause, and its ties are broken in
  registration order.
- A weight computed on access by ``torch.nn.utils.parametrize`` is ranked as ``forward`` computes it and
  masked under its own name (``"2.weight"``), as the analyses read it; ``apply=True`` refuses a mask that
  removes any of it (a computed weight cannot be zeroed in place). A weight that ``torch.nn.utils.prune``
  still masks is refused: ``prune.remove`` it and pass its mask as ``masks``.

>>> from netgeom.nets import mlp
>>> net = mlp(4, [8], 2, seed=0)
>>> m = magnitude_prune(net, 0.5)
>>> m.n_kept(), m.n_total()
(24, 48)
>>> zeros = lambda: int((net[0].weight == 0).sum() + (net[2].weight == 0).sum())
>>> zeros()                     # the model is untouched ...
0
>>> _ = m.apply(net); zeros()   # ... until the masks are applied
24
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import check_bool, check_choice, check_fraction, check_int, check_masks
from .masks import _NEED_OUTPUT, Masks, _names_in_order, _weights

__all__ = ["magnitude_prune", "random_prune", "UnreachableSparsityError", "ProtectFn"]

ProtectFn = Callable[[nn.Module, Masks], Mapping[str, torch.Tensor]]


class UnreachableSparsityError(ValueError):
    """The requested sparsity needs more weights than the unprotected, still-present ones."""


def _check_sparsity(s, name: str) -> float:
    return check_fraction(s, name, low=0.0, high=1.0, low_inclusive=True, high_inclusive=False)


def _prepare(model, sparsity, scope, per_layer, protect, masks, include_output, relative_to):
    """Validate everything; return (every prunable name in forward order, the weights as forward reads them,
    current masks, protected masks, groups of names ranked together, fraction per group)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scope is None:
        scope = "global"
    elif per_layer is not None and scope == "global":
        # per_layer gives each layer its own fraction: one global ranking would be a different rule
        raise ValueError("scope='global' ranks all layers together, but per_layer gives each layer its own "
                         "sparsity; drop scope (or pass scope='layer')")
    check_choice(scope, "scope", ("global", "layer"))
    check_choice(relative_to, "relative_to", ("remaining", "all"))
    # the forward order (one fx trace) matches lists to weights, finds the output layer and orders ties; a
    # model fx cannot trace is refused where that order decides which weights are pruned, and otherwise
    # ranked in registration order
    needs = [why for why, needed in (
        (_NEED_OUTPUT, not include_output),
        ("per_layer as a list needs that order to match its entries to the weights",
         per_layer is not None and not isinstance(per_layer, Mapping)),
        ("masks as a list need that order to match them to the weights", isinstance(masks, (list, tuple))),
    ) if needed]
    all_names, output = _names_in_order(model, "; ".join(needs) or None)  # raises if nothing to prune
    names = all_names if include_output else [k for k in all_names if k != output]
    weights = _weights(model, all_names, "its weights cannot be ranked")
    params = dict(model.named_parameters())
    if masks is None:
        current = Masks({k: torch.ones(weights[k].shape, dtype=torch.bool) for k in names})
    else:
        # any form: Masks, mapping or per-layer list; a mask of a weight that parametrize computes is
        # checked against the computed weight, which is what is ranked
        current = check_masks(masks, model, computed=True).copy()
        for k, v in current.items():
            if not v.any():
                warnings.warn(f"mask for '{k}' removes every weight: the layer is disconnected", stacklevel=4)

    if per_layer is not None:
        if sparsity is not None:
            raise ValueError("give either sparsity or per_layer, not both")
        if isinstance(per_layer, Mapping):
            fractions = {str(k): v for k, v in per_layer.items()}
        elif isinstance(per_layer, (Sequence, np.ndarray)) and not isinstance(per_layer, str):
            if len(per_layer) != len(names):
                raise ValueError(
                    f"per_layer as a list needs one sparsity per prunable layer ({len(names)}: {names}), "
                    f"got {len(per_layer)}"
                )
            fractions = dict(zip(names, per_layer))
        else:
            raise TypeError(
                f"per_layer must be a dict {{param_name: sparsity}} or a list, got {type(per_layer).__name__}"
            )
        for k in fractions:
            if k not in all_names:
                raise KeyError(f"per_layer names '{k}', not a prunable parameter; prunable: {all_names}")
        fractions = {k: _check_sparsity(v, f"per_layer['{k}']") for k, v in fractions.items()}
        for k, v in list(fractions.items()):
            if k not in names:
                if v != 0.0:
                    raise ValueError(f"per_layer prunes '{k}', the output layer, but include_output=False")
                del fractions[k]  # an allocation lists the dense classifier at sparsity 0: nothing to do
        groups = [[k] for k in names if k in fractions]
        group_frac = [fractions[g[0]] for g in groups]
    else:
        if sparsity is None:
            raise ValueError("give a sparsity (or per_layer)")
        s = _check_sparsity(sparsity, "sparsity")
        groups = [list(names)] if scope == "global" else [[k] for k in names]
        group_frac = [s] * len(groups)

    for k in names:
        if k not in current:
            current[k] = torch.ones(weights[k].shape, dtype=torch.bool)
        w = weights[k].detach()
        if not torch.isfinite(w).all():
            raise ValueError(f"model has non-finite weights (NaN or inf) in '{k}'; cannot rank them")

    protected = {k: torch.zeros_like(current[k]) for k in names}
    if protect is not None:
        if not callable(protect):
            raise TypeError(f"protect must be a callable protect(model, masks), got {type(protect).__name__}")
        got = protect(model, current.copy())
        if not isinstance(got, Mapping):
            raise TypeError(f"protect must return a mapping name -> bool tensor, got {type(got).__name__}")
        for k, v in got.items():
            target = weights.get(k, params.get(k))
            if target is None:
                raise KeyError(f"protect returned a mask for '{k}', which the model does not have")
            v = torch.as_tensor(v).detach().cpu()
            if tuple(v.shape) != tuple(target.shape):
                raise ValueError(
                    f"protect mask for '{k}' has shape {tuple(v.shape)}, parameter {tuple(target.shape)}"
                )
            if v.dtype != torch.bool:
                raise TypeError(f"protect mask for '{k}' must be boolean, got {v.dtype}")
            if k in protected:
                protected[k] = v
    return all_names, weights, current, protected, groups, group_frac


def _prune(
    model, sparsity, scope, per_layer, protect, masks, include_output, relative_to, scorer, apply
) -> Masks:
    """``scorer(all_names, weights)`` returns ``score_fn(name, weight)``; lower scores are removed first."""
    apply = check_bool(apply, "apply")
    include_output = check_bool(include_output, "include_output")
    all_names, weights, current, protected, groups, group_frac = _prepare(
        model, sparsity, scope, per_layer, protect, masks, include_output, relative_to
    )
    score_fn = scorer(all_names, weights)
    out = current.copy()
    for group, frac in zip(groups, group_frac):
        kept = [current[k] for k in group]
        n_kept = sum(int(m.sum()) for m in kept)
        if relative_to == "remaining":
            n_remove = int(round(frac * n_kept))
        else:
            n_all = sum(m.numel() for m in kept)
            n_remove = n_kept - int(round((1.0 - frac) * n_all))
            if n_remove < 0:
                raise ValueError(
                    f"{group if len(group) > 1 else group[0]} already has density {n_kept / n_all:.4g} < "
                    f"{1 - frac:.4g} requested (relative_to='all'); pruned weights cannot come back"
                )
        if n_remove == 0:
            continue
        eligible = [(current[k] & ~protected[k]).reshape(-1) for k in group]
        n_eligible = sum(int(e.sum()) for e in eligible)
        if n_remove > n_eligible:
            n_prot = sum(int((current[k] & protected[k]).sum()) for k in group)
            raise UnreachableSparsityError(
                f"cannot remove {n_remove} weights from {group if len(group) > 1 else group[0]}: only "
                f"{n_eligible} of the {n_kept} present are unprotected ({n_prot} protected); lower the "
                "sparsity or protect fewer weights"
            )
        scores = torch.cat([score_fn(k, weights[k]).reshape(-1) for k in group])
        elig = torch.cat(eligible)
        idx = torch.nonzero(elig).squeeze(1)
        # stable sort: equal scores are removed in position order, so the result is deterministic
        order = torch.sort(scores[idx], stable=True).indices[:n_remove]
        drop = torch.zeros(elig.numel(), dtype=torch.bool)
        drop[idx[order]] = True
        offset = 0
        for k in group:
            n = current[k].numel()
            out[k] = current[k] & ~drop[offset : offset + n].reshape(current[k].shape)
            offset += n
            if current[k].any() and not out[k].any():
                warnings.warn(f"pruning removes every weight of '{k}': layer disconnected", stacklevel=3)
    if apply:
        with torch.no_grad():
            out.apply(model)
    return out


def magnitude_prune(
    model: nn.Module,
    sparsity: float | None = None,
    scope: str | None = None,
    per_layer: Mapping[str, float] | Sequence[float] | None = None,
    protect: ProtectFn | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    include_output: bool = True,
    relative_to: str = "remaining",
    apply: bool = False,
) -> Masks:
    """Remove the smallest ``|w|`` (weights read multiplied by ``masks``); see the module docstring.

    Returns the new :class:`Masks` and **leaves the model's weights as they are** unless ``apply=True``,
    which also zeros the pruned weights in place (same as ``masks.apply(model)``).

    >>> from netgeom.nets import mlp
    >>> net = mlp(10, [20], 3, seed=0)
    >>> m1 = magnitude_prune(net, 0.2)                      # 20% of all weights
    >>> m2 = magnitude_prune(net, 0.2, masks=m1)            # 20% of the remaining ones
    >>> m2.n_kept() == 260 - 52 - 42 and m2.is_nested_in(m1)
    True
    """
    def score(name, p):
        return p.detach().abs().to(torch.float64)

    return _prune(
        model, sparsity, scope, per_layer, protect, masks, include_output, relative_to,
        lambda names, weights: score, apply,
    )


def random_prune(
    model: nn.Module,
    sparsity: float | None = None,
    scope: str | None = None,
    per_layer: Mapping[str, float] | Sequence[float] | None = None,
    protect: ProtectFn | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    include_output: bool = True,
    relative_to: str = "remaining",
    seed: int = 0,
    apply: bool = False,
) -> Masks:
    """Remove weights chosen uniformly at random (seeded), with the same counts as :func:`magnitude_prune`.

    Returns the new :class:`Masks` and **leaves the model's weights as they are** unless ``apply=True``,
    which also zeros the pruned weights in place (same as ``masks.apply(model)``).

    To match a reference mask's per-layer fractions (the usual random baseline), pass
    ``per_layer={k: 1 - d for k, d in ref.layer_densities().items()}, relative_to="all"``.

    >>> from netgeom.nets import mlp
    >>> net = mlp(10, [20], 3, seed=0)
    >>> random_prune(net, 0.5, scope="layer", seed=1).layer_densities()
    {'0.weight': 0.5, '2.weight': 0.5}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = check_int(seed, "seed", minimum=0)

    def scorer(names, weights):
        # one draw per prunable weight in forward order, so a tensor's scores depend neither on which others
        # are pruned nor on the order the modules were registered in
        gen = torch.Generator().manual_seed(seed)
        draws = {k: torch.rand(weights[k].shape, generator=gen, dtype=torch.float64) for k in names}
        return lambda name, p: draws[name]

    return _prune(
        model, sparsity, scope, per_layer, protect, masks, include_output, relative_to, scorer, apply
    )
