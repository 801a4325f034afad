"""Intrinsic dimension of hidden representations: the activations of each layer on a data set, via hooks.

Used to follow the ID through a network (input → hidden layers) and across pruning levels.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._matmul import ieee_float32
from .._validation import check_bool, check_choice, check_finite_model, check_masks, check_tensor
from ..nets import UnsupportedLayerError, trace
from ..results import Result, new_axes
from .estimators import MLE, TwoNN
from .neighbors import nearest_neighbors

__all__ = ["RepresentationDimensionResult", "representation_dimension", "demo_section"]

_METHODS = ("mle", "twonn")
# the per-estimator options representation_dimension passes on (as mle_<name>= / twonn_<name>=); the kNN
# options are the shared graph's, and MLE's k is representation_dimension's own k=
_OPTIONS = {"mle": ("variant", "unbiased"), "twonn": ("fit", "discard_fraction")}


def _estimator_options(methods: list[str], estimator_kw: dict) -> dict[str, dict]:
    """Split ``mle_*``/``twonn_*`` options per estimator; refuse any that the chosen methods do not use."""
    out: dict[str, dict] = {m: {} for m in methods}
    for key, value in estimator_kw.items():
        m, _, opt = key.partition("_")
        if m not in _OPTIONS or not opt:
            raise TypeError(f"unknown option {key!r}; prefix estimator options with 'mle_' or 'twonn_'")
        if m == "mle" and opt == "k":
            raise TypeError(
                f"MLE's k is representation_dimension's own k= argument: pass k={value!r}, not mle_k="
            )
        if opt in ("duplicates", "knn_method", "device"):
            # each layer's kNN graph is built once (duplicates dropped) and shared by the estimators
            raise TypeError(f"option {key!r} concerns the shared kNN graph and cannot be set per estimator")
        if opt not in _OPTIONS[m]:
            raise TypeError(f"unknown option {key!r}; {m} options are {[f'{m}_{o}' for o in _OPTIONS[m]]}")
        if m not in methods:
            # an option of an estimator that is not run would be silently ignored
            raise ValueError(f"{key}={value!r} given, but method={methods!r} does not run {m}; leave it out")
        out[m][opt] = check_bool(value, key) if opt == "unbiased" else value
    return out


@dataclasses.dataclass
class RepresentationDimensionResult(Result):
    """ID per layer: ``layers[0]`` is ``"input"``; ``dimensions[method][i]`` the estimate at ``layers[i]``;
    ``widths[i]`` the number of features; ``n_dropped[i]`` duplicate activation vectors dropped there;
    ``options[method]`` the estimator options used (MLE's ``variant``/``unbiased``, TwoNN's
    ``fit``/``discard_fraction``), given or default."""

    layers: list[str]
    widths: list[int]
    dimensions: dict[str, list[float]]
    n_used: list[int]
    n_dropped: list[int]
    k: int | tuple[int, int]
    options: dict[str, dict] = dataclasses.field(default_factory=dict)

    def plot(self, ax=None):
        """ID against layer, one line per estimator."""
        fig, ax = new_axes(ax)
        x = np.arange(len(self.layers))
        for m, vals in self.dimensions.items():
            ax.plot(x, vals, "o-", label=m)
        ax.set_xticks(x, self.layers, rotation=30, ha="right")
        ax.set_ylabel("intrinsic dimension")
        ax.set_title("ID through the network")
        ax.legend()
        return ax


def _default_module_layers(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    if not names:
        raise ValueError(
            "the model has no nn.ReLU/nn.LeakyReLU modules to hook; pass layers=[module names] "
            f"from {[n for n, _ in model.named_modules() if n]}"
        )
    return names


def _graph_locations(g, layers: Sequence[str] | None) -> list[tuple[str, tuple[int, int | None]]]:
    """(name, location in the traced graph) of every representation to record."""
    known = [k for k, v in g.named.items() if v and v[0][0] != 0]
    if layers is not None:
        out = []
        for name in layers:
            locs = g.named.get(name)
            if not locs:
                raise ValueError(f"unknown layer name(s) {[name]}; known: {known}")
            if len(locs) > 1:
                raise ValueError(
                    f"layer '{name}' is used more than once per forward, so its output is ambiguous; hook "
                    "distinct modules"
                )
            out.append((name, locs[0]))
        return out
    rev: dict[tuple[int, int | None], list[str]] = {}
    for k, locs in g.named.items():
        for loc in locs:
            rev.setdefault((loc[0], None if loc[1] == len(g.nodes[loc[0]]._ops) else loc[1]), []).append(k)
    idx = [n.index for n in g.nodes if n.op == "relu"]
    last = g.nodes[g.nodes[g.output].inputs[0]]
    if last.op == "affine" and last.inputs[0] != 0 and last.inputs[0] not in idx:
        idx.append(last.inputs[0])  # the pre-logits: what the classifier reads
    if not idx:
        raise ValueError(
            f"the model has no ReLU (module or function) to record; pass layers=[names] from {known}"
        )
    out = []
    for i in sorted(idx):
        # the module's path when it is called once, else the call's own (fx node) name
        names = [k for k in rev.get((i, None), []) if len(g.named[k]) == 1] or [g.nodes[i].name]
        out.append((names[0], (i, None)))
    return out


def _hooked(net: nn.Module, X: torch.Tensor, names: list[str], batch_size: int) -> list[torch.Tensor]:
    """Module outputs by forward hooks (for models torch.fx cannot trace)."""
    modules = dict(net.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"unknown layer name(s) {missing}; known: {[n for n in modules if n]}")
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def record(name):
        # a copy: the forward may still modify this output in place (residual adds, in-place ReLU chains)
        return lambda _m, _i, out: acts[name].append(out.detach().reshape(len(out), -1).clone())

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    dev = next(net.parameters()).device if any(True for _ in net.parameters()) else X.device
    try:
        # the float32 forward promised: a caller's autocast (bfloat16 products) or bf16/TF32 precision setting
        # changed the representations (MLE 16.1738 -> 16.1743 under torch.autocast("cpu"))
        with torch.no_grad(), torch.autocast(dev.type, enabled=False), ieee_float32():
            for a in range(0, len(X), batch_size):
                net(X[a : a + batch_size].to(dev))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for n in names:
        R = torch.cat(acts[n]).cpu()
        if len(R) != len(X):  # a module called several times per forward (shared ReLU) is ambiguous
            raise ValueError(
                f"layer '{n}' produced {len(R)} rows for {len(X)} inputs (module used more than once per "
                "forward?); hook distinct modules"
            )
        out.append(R)
    return out


def representation_dimension(
    model: nn.Module,
    X,
    layers: Sequence[str] | None = None,
    method: str | Sequence[str] = "mle",
    k: int | tuple[int, int] | None = None,
    masks=None,
    *,
    include_input: bool = True,
    batch_size: int = 4096,
    input_shape: Sequence[int] | None = None,
    **estimator_kw,
) -> RepresentationDimensionResult:
    """Intrinsic dimension of the input and of each hooked layer's output on ``X``.

    Parameters
    ----------
    model : a torch module, read through :func:`netgeom.trace` (eval semantics, float64); never modified.
        A model torch.fx cannot trace is run with forward hooks on its modules instead (float32, eval mode,
        on a copy), and then ``layers`` must name modules.
    X : inputs accepted by ``model`` (tensor or array), first axis = samples.
    layers : names of what to record: a module path (``"layer1.0.conv1"``, ``"3"``: that module's output,
        also inside a folded Conv+BatchNorm) or an fx node name of the traced forward (``"relu_2"``,
        ``"add_1"``: functional calls). Default: every ReLU/LeakyReLU output (modules or functions) and the
        pre-logits (the input of the final affine map) when it is not one of them.
    method : ``"mle"``, ``"twonn"`` or a list of them; each layer's kNN graph is computed once, shared.
    k : MLE's ``k`` (or k-range; default 20; an error when MLE is not among the methods); estimator
        options go in ``estimator_kw`` as ``mle_variant=``, ``mle_unbiased=``, ``twonn_fit=``,
        ``twonn_discard_fraction=``. An option of an estimator not in ``method`` is an error, not ignored;
        the options used (given or default) are recorded in the result's ``options``.
    masks : a :class:`~netgeom.pruning.masks.Masks`, a mapping parameter name -> boolean (0/1) tensor or a
        per-layer list (checked by :func:`~netgeom._validation.check_masks`); masked weights are absent.
    input_shape : one sample's shape; default ``model.input_shape``, else ``X.shape[1:]``.

    Activations are flattened per sample; identical activation vectors (e.g. points mapped to the same
    all-zero pattern) are dropped as duplicates and counted in ``n_dropped``.

    Example
    -------
    >>> from netgeom.nets import mlp
    >>> r = representation_dimension(mlp(10, [32, 32], 2), torch.randn(300, 10), k=10)
    >>> r.layers
    ['input', '1', '3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_finite_model(model)
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise ValueError("method must name at least one estimator")
    for m in methods:
        check_choice(m, "method", _METHODS)
    if k is not None and "mle" not in methods:
        raise ValueError(f"k={k!r} given, but only MLE uses k and method={method!r}; leave k out")
    k = 20 if k is None else k
    include_input = check_bool(include_input, "include_input")
    opts = _estimator_options(methods, estimator_kw)
    masks = check_masks(masks, model)
    # detached: an X that requires grad (a training batch) reached .numpy(): "Can't call numpy() on Tensor
    # that requires grad"
    X = check_tensor(X, "X").detach()
    if X.is_complex():
        raise TypeError("X is complex; representations are defined for real inputs")
    if X.ndim < 2:
        raise ValueError(f"X must have a sample axis and features, got shape {tuple(X.shape)}")
    if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
        raise TypeError(f"layers must be a list of layer names, got {layers!r}")
    shape = input_shape or getattr(model, "input_shape", None) or tuple(X.shape[1:])
    try:
        g = trace(model, masks, input_shape=shape)
    except UnsupportedLayerError as exc:
        # torch.fx cannot trace it: module outputs can still be hooked (same values, float32 forward)
        g, why = None, exc
    if g is not None:
        locs = _graph_locations(g, layers)
        X64 = X.to(torch.float64)
        parts: list[list[torch.Tensor]] = [[] for _ in locs]
        with torch.no_grad():
            for a in range(0, len(X64), batch_size):
                vals = g.values(X64[a : a + batch_size])
                for j, (_, loc) in enumerate(locs):
                    parts[j].append(g.value_at(vals, loc))
        names = [n for n, _ in locs]
        recorded = [torch.cat(p) for p in parts]
    else:
        if layers is None and not any(isinstance(m, (nn.ReLU, nn.LeakyReLU)) for m in model.modules()):
            raise ValueError(
                f"{why}; without a traced graph only modules can be hooked, and the model has no "
                "nn.ReLU/nn.LeakyReLU modules: pass layers=[module names]"
            ) from None
        net = copy.deepcopy(model).eval()
        if masks is not None:
            with torch.no_grad():
                masks.apply(net)
        names = list(layers) if layers is not None else _default_module_layers(net)
        recorded = _hooked(net, X.to(torch.float32), names, batch_size)
    reps = ([("input", X.reshape(len(X), -1))] if include_input else []) + list(zip(names, recorded))
    k_max = max(k) if isinstance(k, (tuple, list)) else k
    ests = {m: MLE(k=k, **opts["mle"]) if m == "mle" else TwoNN(**opts["twonn"]) for m in methods}
    dims: dict[str, list[float]] = {m: [] for m in methods}
    widths, n_used, n_dropped = [], [], []
    for _, R in reps:
        g = nearest_neighbors(R.double().cpu().numpy(), k_max if "mle" in methods else 2)
        widths.append(int(R.shape[1]))
        n_used.append(g.n)
        n_dropped.append(g.n_dropped)
        for m in methods:
            dims[m].append(ests[m].fit(neighbors=g).dimension_)
    used = {
        m: {"variant": e.variant, "unbiased": bool(e.unbiased)} if m == "mle"
        else {"fit": e.fit_method, "discard_fraction": float(e.discard_fraction)}
        for m, e in ests.items()
    }
    return RepresentationDimensionResult(
        layers=[n for n, _ in reps], widths=widths, dimensions=dims, n_used=n_used, n_dropped=n_dropped, k=k,
        options=used,
    )


def demo_section(ctx) -> str:
    """Demo report section: ID (MLE, TwoNN) of the inputs and of each hidden layer, dense vs pruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1000 if ctx.quick else 3000
    X = ctx.data.X_train[:n]
    res = {
        "dense": representation_dimension(ctx.model, X, method=["mle", "twonn"], k=20),
        "pruned": representation_dimension(ctx.pruned_model, X, method=["mle", "twonn"], k=20),
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, r) in enumerate(res.items()):
        for j, (m, vals) in enumerate(r.dimensions.items()):
            ax.plot(range(len(vals)), vals, "o-" if j == 0 else "s--", color=f"C{i}", label=f"{name} {m}")
    r0 = res["dense"]
    ax.set_xticks(range(len(r0.layers)), r0.layers)
    ax.set_xlabel("layer (post-ReLU)")
    ax.set_ylabel("intrinsic dimension")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "id_layers.png", dpi=110)
    plt.close(fig)
    lines = [
        "## Intrinsic dimension of the data and hidden layers",
        "",
        f"{len(X)} training points of {ctx.data.name}; MLE (Levina–Bickel, k = 20) and TwoNN (linear fit, "
        "10% discarded), exact kNN shared by both; duplicate activation vectors dropped.",
        "",
        "| layer | width | MLE dense | TwoNN dense | MLE pruned | TwoNN pruned | dropped (dense/pruned) |",
        "|---|---|---|---|---|---|---|",
    ]
    rd, rp = res["dense"], res["pruned"]
    for i, layer in enumerate(rd.layers):
        lines.append(
            f"| {layer} | {rd.widths[i]} | {rd.dimensions['mle'][i]:.2f} | {rd.dimensions['twonn'][i]:.2f} | "
            f"{rp.dimensions['mle'][i]:.2f} | {rp.dimensions['twonn'][i]:.2f} | "
            f"{rd.n_dropped[i]}/{rp.n_dropped[i]} |"
        )
    lines += ["", "![ID through the network](id_layers.png)", ""]
    return "\n".join(lines)
