"""Any traceable network as a graph of piecewise-linear operations (the one reader every analysis uses).

:func:`trace` runs ``torch.fx`` symbolic tracing on a module (its own ``forward``, nested modules, functional
calls) and turns the traced program into a :class:`PLGraph`: a DAG of

* ``affine`` nodes — a ``Linear``/``Conv1d``/``Conv2d`` (any stride, padding, groups, dilation) together with
  the weight-free affine operations around it (eval ``BatchNorm``, ``AvgPool``, ``AdaptiveAvgPool``, a mean
  over non-batch axes), or such weight-free operations alone; at most one weight tensor per node, so that each
  weight corresponds to exactly one node (the grouping of today's :func:`affine_layers`);
* ``relu`` nodes (``ReLU``/``LeakyReLU`` as modules, ``F.relu``, ``torch.relu``, ``x.relu()``,
  ``F.leaky_relu``), ``maxpool`` nodes (``MaxPool1d/2d``, ``F.max_pool1d/2d``), ``add`` (residual ``+``,
  ``torch.add``) and ``cat`` (``torch.cat`` along the channel axis) nodes.

Reshapes that keep the batch axis (``flatten``, ``view``, ``reshape``, ``Flatten``, ``Unflatten``) and
``Dropout``/``Identity`` (eval semantics) create no node: every node's value is kept flat per sample, and a
reshape only changes the shape the next operation sees. Anything else — data-dependent control flow, other
activations, attention, indexing, constants created in ``forward`` — is refused with an
:class:`UnsupportedLayerError` that names the node, its operation and the line of the user's source.
Masks remove the weights they name; everything is evaluated in float64 with eval semantics.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import inspect
import logging
import math
import operator
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.fx._symbolic_trace as _fx_st
import torch.fx.immutable_collections as _fx_ic
import torch.fx.traceback as _fx_traceback
import torch.nn.functional as F
from torch import nn

from .._matmul import gradual_underflow, linear32
from .._validation import UnknownNameError, check_int, check_masks, check_tensor

__all__ = ["PLGraph", "PLNode", "SUPPORTED_LAYERS", "UnsupportedLayerError", "trace"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_RESHAPES = (nn.Flatten, nn.Unflatten)
_SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d)
_MODE_DEPENDENT = _BN + (nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_LEAVES = _WEIGHTED + _BN + _POOLS + _RESHAPES + _SKIPPED + _ACTIVATIONS + _MAXPOOLS
SUPPORTED_LAYERS: tuple[str, ...] = tuple(c.__name__ for c in _LEAVES + (nn.Sequential,)) + (
    "F.linear(x, self.weight, self.bias)",
    "F.relu",
    "torch.relu",
    "Tensor.relu",
    "F.leaky_relu",
    "F.max_pool1d/2d",
    "F.avg_pool1d/2d",
    "F.adaptive_avg_pool1d/2d",
    "F.dropout",
    "+ / torch.add (residual)",
    "torch.cat (dim 1)",
    "flatten/view/reshape",
    "Tensor.mean over non-batch axes",
)

# (callables or method names) -> kind
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"}
_LEAKY_FUNCS = {F.leaky_relu, F.leaky_relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_FUNCS = {
    torch.flatten,
    torch.reshape,
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "unflatten",
    "view_as",
}
_RESHAPE_FUNCS |= {"squeeze", "unsqueeze", torch.squeeze, torch.unsqueeze}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2}
_POOL_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_MEAN_FUNCS = {torch.mean, "mean"}
_META_METHODS = {"size", "dim"}
_META_ATTRS = {"shape", "ndim"}
_INPLACE_METHODS = {"relu_", "add_"}
_MAYBE_COPY = {torch.flatten, torch.reshape, "flatten", "reshape"}  # (of _RESHAPE_FUNCS: views or copies)


class UnsupportedLayerError(TypeError):
    """An operation that is not piecewise-linear, or that netgeom cannot read (named, with its source)."""


def _fmt_kernel(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


# ------------------------------------------------------------------------------------------- affine ops
@dataclasses.dataclass(eq=False)
class _AffineOp:
    """One affine operation inside an affine node, applied on a batch shaped ``(B, *in_shape)``."""

    name: str  # module path, or fx node name for a functional call
    type_name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    fn: Callable  # (x, params, bias: bool) -> y
    params: dict[str, torch.Tensor]  # float64, CPU
    fan_in: int  # most nonzero coefficients of one output (for rounding-error bounds)
    weighted: bool = False
    param_name: str | None = None
    mask: torch.Tensor | None = None
    module: nn.Module | None = None
    # a convolution's (stride, padding, dilation, groups) as given to F.conv1d/2d, for reading its matrix off
    # the kernel (PLNode.sparse_matrix)
    conv: tuple | None = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def cast(self, dtype, device) -> dict[str, torch.Tensor]:
        key = (dtype, str(device))
        if key not in self._cache:
            self._cache[key] = {k: v.to(dtype=dtype, device=device) for k, v in self.params.items()}
        return self._cache[key]

    def __call__(self, x: torch.Tensor, bias: bool = True, params=None) -> torch.Tensor:
        p = params if params is not None else self.cast(x.dtype, x.device)
        return self.fn(x, p, bias)


def _linear_fn(x, p, bias):
    return linear32(x, p["weight"], p.get("bias") if bias else None)


def _conv_fn(dim, stride, padding, dilation, groups):
    conv = F.conv1d if dim == 1 else F.conv2d

    def fn(x, p, bias):
        return conv(x, p["weight"], p.get("bias") if bias else None, stride, padding, dilation, groups)

    return fn


def _bn_fn(x, p, bias):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * p["scale"].reshape(shape)
    return y + p["shift"].reshape(shape) if bias else y


def _const_fn(func, args, kwargs):
    def fn(x, p, bias):
        return func(x, *args, **kwargs)

    return fn


def _f64(t: torch.Tensor) -> torch.Tensor:
    """A parameter as a float64 CPU tensor of its own (one conversion or copy: each torch call is a few
    microseconds, and more right after other work has pushed torch's code and tables out of the caches).
    Never the parameter itself, for a float64 CPU model too: a layer read before ``masks.apply(model)`` or an
    optimiser step must keep the values it was read with, and writing into a returned kernel must not
    change the model."""
    t = t.detach()
    if t.dtype == torch.float64 and t.device.type == "cpu":
        return t.clone()
    return t.to(device="cpu", dtype=torch.float64)


def _bn_scale_shift(m: nn.Module, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedLayerError(
            f"{source} has no running statistics (track_running_stats=False), so it cannot be folded "
            "into an affine map"
        )
    var = m.running_var.detach().double().cpu() + m.eps
    if not bool((var > 0).all()):
        bad = int((~(var > 0)).sum())
        raise ValueError(
            f"{source}: running_var + eps is not positive for {bad} channel(s) (eps={m.eps}), so the layer "
            "divides by zero (or by the root of a negative number); fix its statistics or eps"
        )
    sd = torch.sqrt(var)
    scale = (m.weight.detach().double().cpu() if m.affine else torch.ones_like(sd)) / sd
    shift = (
        m.bias.detach().double().cpu() if m.affine else 0.0
    ) - m.running_mean.detach().double().cpu() * scale
    if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(shift).all())):
        raise ValueError(
            f"{source}: its folded scale or shift is not finite (NaN or inf in its statistics or parameters, "
            "or a running_var + eps so small that the scale overflows)"
        )
    return scale, shift


def _conv_csr(w: np.ndarray, in_shape, out_shape, conv):
    """The ``(out, in)`` CSR matrix of a convolution without bias (kernel ``w``, float64, finite), nonzeros
    only, built by index arithmetic: output ``(co, oy, ox)`` reads input ``(ci, oy sy - py + ky dy, ox sx -
    px + kx dx)`` with weight ``w[co, ci - g Ci/G, ky, kx]`` for ``co`` in group ``g``. Each entry is one
    weight, as the convolution of the identity basis gives it (no sum of two products: distinct kernel
    positions read distinct inputs)."""
    import scipy.sparse

    stride, padding, dilation, groups = conv
    nd = w.ndim - 2
    k = w.shape[2:]
    if isinstance(padding, str):
        # torch's "same" pads (total // 2) before and the rest after; "valid" pads nothing
        pad = tuple(d * (kk - 1) // 2 for d, kk in zip(dilation, k)) if padding == "same" else (0,) * nd
    else:
        pad = tuple(padding)
    Co, Cig = w.shape[:2]
    # a 1-d convolution as a 2-d one of height 1
    if nd == 1:
        w = w[:, :, None, :]
        (H, Wd), (Ho, Wo) = (1, in_shape[1]), (1, out_shape[1])
        (sy, sx), (py, px), (dy, dx) = (1, stride[0]), (0, pad[0]), (1, dilation[0])
    else:
        (H, Wd), (Ho, Wo) = in_shape[1:], out_shape[1:]
        (sy, sx), (py, px), (dy, dx) = stride, pad, dilation
    kh, kw = w.shape[2:]
    iy = np.arange(Ho)[:, None] * sy - py + np.arange(kh)[None, :] * dy  # (Ho, kh)
    ix = np.arange(Wo)[:, None] * sx - px + np.arange(kw)[None, :] * dx  # (Wo, kw)
    vy, vx = (iy >= 0) & (iy < H), (ix >= 0) & (ix < Wd)
    P, HW, per_group = Ho * Wo, H * Wd, Co // groups
    wf = w.reshape(Co, -1)
    counts = np.zeros(Co * P, dtype=np.int64)
    cols, vals = [], []
    for co in range(Co):
        # the nonzero kernel entries in (ci, ky, kx) order: each row's columns come out ascending
        e = np.flatnonzero(wf[co])
        if not len(e):
            continue
        cil, rem = np.divmod(e, kh * kw)
        ky, kx = np.divmod(rem, kw)
        ci = (co // per_group) * Cig + cil
        col = (ci * HW)[None, None, :] + iy[:, None, ky] * Wd + ix[None, :, kx]  # (Ho, Wo, n)
        ok = (vy[:, None, ky] & vx[None, :, kx]).reshape(P, len(e))
        counts[co * P : (co + 1) * P] = ok.sum(axis=1)
        cols.append(col.reshape(P, len(e))[ok])
        vals.append(np.broadcast_to(wf[co, e], ok.shape)[ok])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    data = np.concatenate(vals) if vals else np.zeros(0)
    indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return scipy.sparse.csr_matrix(
        (data, indices, indptr), shape=(Co * P, math.prod(in_shape)), dtype=np.float64
    )


# ------------------------------------------------------------------------------------------------ nodes
@dataclasses.dataclass(eq=False)
class PLNode:
    """One node of a :class:`PLGraph` (see the module docstring for the ops).

    ``kernel`` (affine nodes with a weight) is the masked parameter in its own shape, float64, with the
    scale of a BatchNorm that directly follows it on the layer's output features folded in (as
    :attr:`AffineLayer.kernel`: unscaled when a reshape comes between them, or when the BatchNorm scales
    another axis); ``mask`` is the boolean mask applied to it (``None`` when the parameter is unmasked).
    """

    index: int
    name: str
    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    source: str
    module: str | None = None
    param_name: str | None = None
    kind: str | None = None
    kernel: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    negative_slope: float = 0.0
    windows: torch.Tensor | None = None
    in_shape: tuple[int, ...] | None = None
    _ops: list[_AffineOp] = dataclasses.field(default_factory=list, repr=False)
    _pool: dict | None = dataclasses.field(default=None, repr=False)
    _max_entries: int = dataclasses.field(default=2**27, repr=False)
    _matrix: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    _sparse: Any = dataclasses.field(default=None, repr=False)
    _bias: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    _first_name: str = dataclasses.field(default="", repr=False)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape) if self.in_shape is not None else self.size

    def __repr__(self) -> str:
        extra = f", kind={self.kind}" if self.op == "affine" else ""
        return (
            f"PLNode({self.index}, {self.op}, name={self.name!r}, inputs={self.inputs}, shape={self.shape}"
            f"{extra})"
        )

    # ------------------------------------------------------------------ affine
    def _need(self, op: str) -> None:
        if self.op != op:
            raise TypeError(f"node {self.index} ({self.op}) is not an {op} node")

    def apply(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The affine map on a batch ``x`` of shape ``(B, in_size)`` (any float dtype), via torch ops."""
        self._need("affine")
        y = x.reshape(x.shape[0], *self._ops[0].in_shape)
        for op in self._ops:
            if tuple(y.shape[1:]) != op.in_shape:
                y = y.reshape(y.shape[0], *op.in_shape)
            y = op(y, bias)
        return y.reshape(x.shape[0], self.size)

    @property
    def bias_vector(self) -> torch.Tensor:
        """``apply(0)``: the constant part of the affine map, ``(size,)`` float64."""
        self._need("affine")
        if self._bias is None:
            ops = self._ops
            if len(ops) == 1 and ops[0].fn is _linear_fn and len(ops[0].in_shape) == 1:
                # a lone Linear maps 0 to its bias exactly (every product is a zero): no GEMM needed
                w = ops[0].params["weight"]
                b = ops[0].params.get("bias")
                # a copy: a float64 model's parameter would otherwise be shared with the result
                self._bias = b.clone() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            else:
                with torch.no_grad():
                    self._bias = self.apply(torch.zeros(1, self.in_size, dtype=torch.float64))[0]
        return self._bias

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix(), bias_vector)`` as float64 numpy arrays, for readers that never write them (the slice
        engines): a lone Linear's own parameters, without the copy :attr:`bias_vector` makes of its bias (a
        torch call per node and slice, several times dearer than numpy's right after a slice)."""
        self._need("affine")
        ops = self._ops
        if (
            self._matrix is None
            and self._bias is None
            and len(ops) == 1
            and ops[0].type_name == "Linear"
            and ops[0].fn is _linear_fn
            and len(ops[0].in_shape) == 1
        ):
            b = ops[0].params.get("bias")
            if b is not None:
                return ops[0].params["weight"].numpy(), b.numpy()
        return self.matrix().numpy(), self.bias_vector.numpy()

    def matrix(self) -> torch.Tensor:
        """The dense ``(size, in_size)`` float64 matrix of the affine map (cached): the identity basis
        pushed through the node's ops, or for a Conv/Linear + BatchNorm node the same floats read off its
        parameters (see :meth:`sparse_matrix`).

        Raises ``ValueError`` when it would have more than ``max_entries`` entries (a convolution on a large
        input), instead of exhausting memory.
        """
        self._need("affine")
        if self._matrix is not None:
            return self._matrix
        n_in, n_out = self.in_size, self.size
        ops = self._ops
        if len(ops) == 1 and ops[0].type_name == "Linear" and len(ops[0].in_shape) == 1:
            self._matrix = ops[0].params["weight"]
            return self._matrix
        if n_in * n_out > self._max_entries:
            raise ValueError(
                f"layer '{self._first_name}' unrolls to a dense {n_out} x {n_in} matrix ({n_in * n_out:,} "
                f"entries, over max_entries={self._max_entries:,}); analyse a smaller input (crop or "
                "downsample) or raise max_entries if the memory is there"
            )
        first = ops[0]
        # The probe's zeros are +0.0 where its GEMM sums from +0.0, but a reduction over one product (a 1x1
        # convolution of one input channel per group, a Linear of one input) gives 0 * w, -0.0 for a
        # negative w: those keep the probe, so that this matrix is the probed one to the sign of each zero.
        direct = None if first.weighted and first.params["weight"][0].numel() == 1 else self._direct()
        if direct is not None:
            pre, scales = direct
            W = pre.toarray()
            for r in scales:
                # the probe's BatchNorm step, x * scale, on every entry: zeros too (0 * a negative scale is
                # -0.0 there), so that this is the probed matrix bit for bit
                W *= r[:, None]
            self._matrix = torch.from_numpy(W)
            return self._matrix
        # push the identity basis through in chunks, so that the intermediate activations of a convolution
        # stay within about the size of the result
        W = torch.empty((n_out, n_in), dtype=torch.float64)
        chunk = max(1, min(n_in, self._max_entries // max(n_out, 1), 4096))
        with torch.no_grad():
            for i in range(0, n_in, chunk):
                j = min(n_in, i + chunk)
                basis = torch.zeros((j - i, n_in), dtype=torch.float64)
                basis[torch.arange(j - i), torch.arange(i, j)] = 1.0
                W[:, i:j] = self.apply(basis, bias=False).T
        self._matrix = W
        return W

    def sparse_matrix(self):
        """:meth:`matrix` as a ``scipy.sparse.csr_matrix`` (cached): the same floats, its nonzeros only
        (NaN included, zeros of either sign left out), indices sorted.

        A node made of one ``Conv1d``/``Conv2d`` or ``Linear`` and the ``BatchNorm`` layers after it (or of
        BatchNorm layers alone) is read off its parameters without a dense temporary, and without the
        ``max_entries`` limit; any other node is :meth:`matrix` converted (and refused over ``max_entries``).

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
        >>> node = trace(net, input_shape=(1, 4, 4)).nodes[1]
        >>> S = node.sparse_matrix()
        >>> S.shape, S.nnz, bool((S.toarray() == node.matrix().numpy()).all())
        ((32, 16), 200, True)
        """
        self._need("affine")
        if self._sparse is not None:
            return self._sparse
        import scipy.sparse

        ops = self._ops
        direct = None
        if not (len(ops) == 1 and ops[0].type_name == "Linear" and len(ops[0].in_shape) == 1):
            direct = self._direct()  # (a lone Linear's matrix is its weight, NaN in place: converted below)
        if direct is None:
            self._sparse = scipy.sparse.csr_matrix(self.matrix().numpy())
            return self._sparse
        S, scales = direct
        if scales:
            rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
            data = S.data
            for r in scales:
                data = data * r[rows]  # (the probe's order: conv, then each BatchNorm in turn)
            S = scipy.sparse.csr_matrix((data, S.indices, S.indptr), shape=S.shape)
            S.eliminate_zeros()  # (a product that underflows, a zero scale: zeros of the probed matrix too)
        self._sparse = S
        return S

    def _direct(self):
        """``(pre, scales)`` when the node's matrix can be read off its parameters, else ``None``: ``pre`` is
        the CSR matrix of its Conv/Linear (the identity for BatchNorm layers alone), exactly the identity
        basis' image through it (each entry one weight: an output unit reads an input unit through at most
        one kernel position), nonzeros only, and ``scales`` the per-row factors of the BatchNorm layers that
        follow, in order. A weight that is NaN or infinite spreads over every entry its kernel touches in
        the probe (``nan * 0``): such nodes are left to it."""
        import scipy.sparse

        ops = self._ops
        first = ops[0]
        if first.fn is _bn_fn:
            n = self.in_size
            pre = scipy.sparse.csr_matrix(
                (np.ones(n), np.arange(n), np.arange(n + 1)), shape=(n, n), dtype=np.float64
            )
            rest = ops
        elif first.weighted and (
            first.conv is not None or (first.fn is _linear_fn and len(first.in_shape) == 1)
        ):
            w = first.params["weight"]
            if not bool(torch.isfinite(w).all()):
                return None
            if first.conv is not None:
                pre = _conv_csr(w.numpy(), first.in_shape, first.out_shape, first.conv)
            else:
                pre = scipy.sparse.csr_matrix(w.numpy())
            rest = ops[1:]
        else:
            return None
        scales = []
        for op in rest:
            if op.fn is not _bn_fn:
                return None
            s = op.params["scale"].numpy()
            scales.append(np.repeat(s, math.prod(op.in_shape[1:])))
        return pre, scales

    # ------------------------------------------------------------------ maxpool
    def pool(self, x: torch.Tensor, return_indices: bool = False):
        """Max-pooling of a flat batch ``(B, in_size)``; with ``return_indices`` also the position of each
        window's argmax in its row of :attr:`windows` (the first maximal position, like torch)."""
        self._need("maxpool")
        p = self._pool
        y = x.reshape(x.shape[0], *self.in_shape)
        f = F.max_pool1d if p["dim"] == 1 else F.max_pool2d
        out = f(y, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], return_indices)
        if not return_indices:
            return out.reshape(x.shape[0], self.size)
        vals, idx = out
        B = x.shape[0]
        st = p["starts"]
        if p["dim"] == 1:
            pos = torch.div(idx - st[0].to(idx.device), p["dilation"][0], rounding_mode="floor")
        else:
            W = self.in_shape[2]
            h = torch.div(idx, W, rounding_mode="floor")
            dh = torch.div(h - st[0].to(idx.device)[:, None], p["dilation"][0], rounding_mode="floor")
            dw = torch.div(
                idx - h * W - st[1].to(idx.device)[None, :], p["dilation"][1], rounding_mode="floor"
            )
            pos = dh * p["kernel"][1] + dw
        pos = pos.reshape(B, self.size)
        return vals.reshape(B, self.size), pos


# ------------------------------------------------------------------------------------------------ graph
class PLGraph:
    """A traced piecewise-linear network (see :func:`trace`).

    >>> from netgeom.nets import mlp
    >>> g = trace(mlp(3, [4], 2, seed=0))
    >>> [n.op for n in g.nodes]
    ['input', 'affine', 'relu', 'affine', 'output']
    >>> g.is_chain, g.input_shape
    (True, (3,))
    """

    def __init__(self, nodes: list[PLNode], input_shape: tuple[int, ...], model_name: str):
        self.nodes = nodes
        self.input_shape = input_shape
        self.output = len(nodes) - 1
        self.model_name = model_name
        # module path / fx node name -> [(node index, affine ops applied)]: where that output lives (several
        # places for a module called more than once); filled by trace
        self.named: dict[str, list[tuple[int, int | None]]] = {}
        self.users: list[list[int]] = [[] for _ in nodes]
        for n in nodes:
            for i in n.inputs:
                self.users[i].append(n.index)

    def __repr__(self) -> str:
        ops = [n.op for n in self.nodes]
        return f"PLGraph({self.model_name}, {len(ops)} nodes: " + ", ".join(ops) + ")"

    @property
    def n_in(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_out(self) -> int:
        return self.nodes[self.output].size

    def _flat_input(self, x, dtype=torch.float64) -> torch.Tensor:
        x = check_tensor(x, "x", dtype=dtype)
        if x.ndim < 2:
            raise ValueError(f"x must have a batch axis: (B, {self.n_in}) or (B, *{self.input_shape})")
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        if x.shape[1] != self.n_in:
            raise ValueError(
                f"x has {x.shape[1]} features per sample, but the network takes {self.n_in} "
                f"(input_shape={self.input_shape})"
            )
        return x

    def eval_node(self, node: PLNode, vals: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Value of ``node`` from the flat values of its inputs (any float dtype, any device)."""
        op = node.op
        if op == "affine":
            return node.apply(vals[node.inputs[0]])
        if op == "relu":
            z = vals[node.inputs[0]]
            return torch.relu(z) if node.negative_slope == 0 else F.leaky_relu(z, node.negative_slope)
        if op == "maxpool":
            return node.pool(vals[node.inputs[0]])
        if op == "add":
            a, b = (vals[i] for i in node.inputs)
            return a + b
        if op == "cat":
            return torch.cat([vals[i] for i in node.inputs], dim=1)
        if op == "output":
            return vals[node.inputs[0]]
        raise AssertionError(op)

    def values(self, x) -> list[torch.Tensor]:
        """Every node's value on the batch ``x``, each ``(B, node.size)`` float64."""
        vals: list[torch.Tensor | None] = [self._flat_input(x)]
        with torch.no_grad():
            for node in self.nodes[1:]:
                vals.append(self.eval_node(node, vals))
        return vals

    def forward(self, x) -> torch.Tensor:
        """The network's output ``(B, n_out)`` in float64 (equals ``model(x)`` up to rounding)."""
        x = self._flat_input(x)
        last_use = {}
        for n in self.nodes:
            for i in n.inputs:
                last_use[i] = n.index
        vals: list[torch.Tensor | None] = [x]
        with torch.no_grad():
            for node in self.nodes[1:]:
                vals.append(self.eval_node(node, vals))
                for i in node.inputs:  # free what no later node reads
                    if last_use.get(i) == node.index:
                        vals[i] = None
        return vals[self.output]

    __call__ = forward

    def value_at(self, vals: Sequence[torch.Tensor], loc: tuple[int, int | None]) -> torch.Tensor:
        """The value at a location of :attr:`named`: a node's value, or an intermediate of an affine node
        (e.g. a convolution's output before the BatchNorm folded after it)."""
        i, m = loc
        node = self.nodes[i]
        if m is None or m == len(node._ops):
            return vals[i]
        x = vals[node.inputs[0]]
        y = x.reshape(x.shape[0], *node._ops[0].in_shape)
        for op in node._ops[:m]:
            y = op(y.reshape(y.shape[0], *op.in_shape))
        return y.reshape(x.shape[0], math.prod(y.shape[1:]))

    def _identity_layer(self, node: PLNode):
        """The identity map before an activation ``node`` that follows no affine map (see :meth:`layers`)."""
        from .layers import AffineLayer

        n = node.size
        if n * n > node._max_entries:
            raise ValueError(
                f"activation {node.source} follows no affine map: the chain view puts an identity layer "
                f"before it, a dense {n} x {n} matrix ({n * n:,} entries, over max_entries="
                f"{node._max_entries:,}); analyse a smaller input or raise max_entries if the memory is there"
            )
        return AffineLayer(
            name=node.name,
            param_name=None,
            weight=torch.eye(n, dtype=torch.float64),
            bias=torch.zeros(n, dtype=torch.float64),
            activation="relu" if node.negative_slope == 0 else "leaky_relu",
            negative_slope=float(node.negative_slope),
            kernel=None,
            mask=None,
            kind="affine",
            in_shape=tuple(node.shape),
            out_shape=tuple(node.shape),
        )

    @property
    def is_chain(self) -> bool:
        return self._chain_break() is None

    def _chain_break(self) -> PLNode | None:
        for node in self.nodes[1:]:
            if node.op in ("maxpool", "add", "cat"):
                return node
            if node.inputs != (node.index - 1,) or len(self.users[node.index - 1]) != 1:
                return node
        return None

    def layers(self):
        """The chain view: a list of :class:`~netgeom.nets.AffineLayer` (what :func:`affine_layers` returns).

        Raises :class:`UnsupportedLayerError` naming the first node that breaks the chain (a max-pool, a
        residual add, a concatenation, a branch). An activation on the input or on another activation
        (``relu(x)`` first, ``relu(relu(z))``) gets a weight-free identity layer of its own (named after
        the activation, ``param_name`` None): the chain then computes what the graph computes, and its
        units are that activation's, as every graph-based analysis (``count_patterns``) reads them.
        """
        from .layers import AffineLayer

        bad = self._chain_break()
        if bad is not None:
            what = {
                "maxpool": "is a max-pooling",
                "add": "is a residual addition",
                "cat": "is a concatenation",
            }.get(bad.op, "starts a branch")
            raise UnsupportedLayerError(
                f"{bad.source} {what}, so {self.model_name} is not a chain of affine maps and activations; "
                "this analysis reads chains only (use the traced graph: netgeom.trace)"
            )
        out = []
        nodes = self.nodes
        i = 1
        while nodes[i].op != "output":
            node = nodes[i]
            if node.op != "affine":
                out.append(self._identity_layer(node))
                i += 1
                continue
            nxt = nodes[i + 1]
            if nxt.op == "relu":
                activation = "relu" if nxt.negative_slope == 0 else "leaky_relu"
                slope = nxt.negative_slope
                i += 2
            else:
                activation, slope = "identity", 1.0
                i += 1
            out.append(
                AffineLayer(
                    name=node._first_name,
                    param_name=node.param_name,
                    weight=node.matrix(),
                    bias=node.bias_vector,
                    activation=activation,
                    negative_slope=float(slope),
                    kernel=node.kernel,
                    mask=node.mask,
                    kind=node.kind,
                    in_shape=tuple(node.in_shape),
                    out_shape=tuple(node.shape),
                    kernel_in_shape=_kernel_in_shape(node),
                )
            )
        return out


# ------------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """fx's tracer with netgeom's leaves, recording for each node the innermost frame outside torch (the
    user's line, for error messages) instead of fx's formatted stack traces, which cost about as much as the
    rest of the symbolic trace."""

    def __init__(self):
        # fx's default (autowrap_modules=(math,)) collects the ids of math's public callables in every
        # tracer; they are fixed objects, collected once here
        if _MATH_IDS[0] is None:
            super().__init__()
            _MATH_IDS[0] = frozenset(self._autowrap_function_ids)
            return
        super().__init__(autowrap_modules=())
        self._autowrap_function_ids = set(_MATH_IDS[0])
        self._autowrap_search = [math]

    # whether this tracer takes the short paths (create_node, _fx_call_module, _Proxy's torch functions):
    # None = as checked once per process (_FAST_NODES); the check's own probe tracers set it
    fast: bool | None = None

    def short_paths(self) -> bool:
        return self.fast if self.fast is not None else bool(_FAST_NODES[0])

    def trace(self, root, concrete_args=None):
        # Three costs of fx's own trace are avoided here, its semantics kept:
        # * fx wraps every public ``math`` function (and every fx.wrap-registered one) afresh in each trace,
        #   through functools.wraps (about a sixth of a small model's trace). Its wrapper is a function of the
        #   wrapped function alone (it records a call_function node when an argument is a Proxy, else calls
        #   through), so one wrapper per function serves every trace; the patching and reverting stay fx's.
        # * fx reroutes every module call and attribute miss by assigning ``nn.Module.__call__`` and
        #   ``nn.Module.__getattr__``: CPython then updates the call and getattr slots of each of nn.Module's
        #   ~350 subclasses, twice per trace (~0.25 ms, a fifth of a small model's trace, and it leaves every
        #   module type's attribute cache cold). Here fx's two wrappers run instead from dispatchers that
        #   call them only on the tracing thread (see _ModuleHooks).
        # * fx then looks through ``math``'s namespace for the functions to wrap and patches them one by one
        #   (~55 patch records made and reverted a trace); with the dispatchers, _HookPatcher swaps the same
        #   wrappers in and out of it at once instead.
        # fx keeps its patcher in one module global (CURRENT_PATCHER), which every trace sets and restores,
        # and its own patching reroutes every thread's module calls: traces in several threads at once
        # failed ("CURRENT_PATCHER is None in finally block") or left a stale patcher set. One at a time.
        with _TRACE_LOCK.exclusive():
            if self.fast is None and _FAST_NODES[0] is None:
                _fast_nodes_work()
            hooks = _ModuleHooks.plan(root) if concrete_args is None else None
            search = self._autowrap_search
            if hooks is not None and search == [math]:
                self._autowrap_search = []
            try:
                ids = self._autowrap_function_ids if search == [math] else None
                with _fx_substitutions(hooks, math_ids=ids):
                    return super().trace(root, concrete_args)
            finally:
                self._autowrap_search = search

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # fx reads the signature of forward (inspect.signature, ~30 us a trace) to make its placeholders; a
        # plain ``forward(self, x)`` (no default, *args, **kwargs, keyword-only argument, wrapper or
        # __signature__) gets the one placeholder fx makes for it: named as the argument, no default, the
        # argument's annotation as its type
        co = getattr(root_fn, "__code__", None)
        if (
            concrete_args is not None
            or not is_module
            or co is None
            or co.co_argcount != 2
            or co.co_kwonlyargcount
            or co.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
            or getattr(root_fn, "__defaults__", None)
            or hasattr(root_fn, "__wrapped__")
            or hasattr(root_fn, "__signature__")
        ):
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        name = co.co_varnames[1]
        x = self.create_proxy("placeholder", name, (), {}, type_expr=root_fn.__annotations__.get(name, None))
        return root_fn, [self.root, x]

    def call_module(self, m, forward, args, kwargs):
        hooked = _HOOK_TLS.__dict__.get("call")
        if hooked is None:
            return super().call_module(m, forward, args, kwargs)

        def own_call(*a, **k):
            # fx traces into a non-leaf module through the original nn.Module.__call__, which reaches
            # nn.Module._call_impl, now the dispatcher: this call is the module's own, not a new one
            _HOOK_TLS.bypass = m
            return forward(*a, **k)

        try:
            if self.short_paths():
                return self._fx_call_module(m, own_call, args, kwargs)
            return super().call_module(m, own_call, args, kwargs)
        finally:
            _HOOK_TLS.bypass = None

    def _fx_call_module(self, m, forward, args, kwargs):
        """fx's Tracer.call_module step for step, its ScopeContextManager's copy.copy of the scope (which
        goes through __reduce_ex__) replaced by saving the two fields it restores."""
        path = self.path_of_module(m)
        scope = self.scope
        prev = scope.module_path, scope.module_type
        scope.module_path, scope.module_type = path, type(m)
        try:
            num_calls = self.num_calls.get(path, 0)
            module_key = f"{path}@{num_calls}" if num_calls > 0 else path
            self.module_stack[module_key] = (path, type(m))
            self.num_calls[path] = num_calls + 1
            if not self.is_leaf_module(m, path):
                ret_val = forward(*args, **kwargs)
            else:
                ret_val = self.create_proxy("call_module", path, args, kwargs)
            key, _ = self.module_stack.popitem(last=True)
            if key != module_key:
                raise AssertionError(f"Unexpected key {key}, expected {module_key}")
        finally:
            scope.module_path, scope.module_type = prev
        return ret_val

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_arg(self, a):
        # fx's Tracer tests every argument for a parameter, tensor, module, named tuple, constant, opaque
        # and proxyable type before its base class maps it; a proxy, a number, a string, None and a plain
        # tuple or list (what a forward passes) are none of these, and map as the base maps them
        plain = _PLAIN_ARGS.get(type(a))
        if plain is not None:
            return plain(self, a)
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _LEAVES or getattr(type(m), "netgeom_linear", False):
            return True
        return super().is_leaf_module(m, qualname)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        g = self.graph
        if (
            self.short_paths()
            and not self.check_mutable_operations
            and not self.record_stack_traces
            and g.owning_module is None
            and not _fx_traceback.has_preserved_node_meta()
            and not _FX_PROXY_LOG.isEnabledFor(logging.DEBUG)
            and _no_sym(args)
            and _no_sym(kwargs)
        ):
            # fx's TracerBase.create_node and Graph.create_node, step for step, without Graph.create_node's
            # walk of the arguments for torch.SymInt/SymFloat/SymBool values (it only warns about them, and
            # _no_sym found none): about a sixth of a small model's symbolic trace
            args = args if args else ()
            kwargs = kwargs if kwargs else _IMMUTABLE_DICT()
            candidate = name if name is not None else g._target_to_str(target)
            name = g._graph_namespace.create_name(candidate, None)
            node = fx.Node(g, name, kind, target, args, kwargs, type_expr)
            g._graph_namespace.associate_name_with_obj(name, node)
            g._insert(node)
            g._find_nodes_lookup_table.insert(node)
            g._len += 1
            self.node_name_to_scope[node.name] = (self.scope.module_path, self.scope.module_type)
            stack = self.module_stack
            if stack:
                # (an OrderedDict's copy is copy.copy's, without its __reduce_ex__ round trip)
                node.meta["nn_module_stack"] = (
                    stack.copy() if type(stack) is collections.OrderedDict else copy.copy(stack)
                )
        else:
            node = super().create_node(kind, target, args, kwargs, name, type_expr)
        # fx's own record keeps the frames from the outermost ``forward`` inwards; the line shown is the
        # innermost of them outside torch (and this tracer)
        f = sys._getframe(1)
        internal = _INTERNAL
        while f is not None:
            name = f.f_code.co_filename
            own = internal.get(name)
            if not (own if own is not None else _internal_file(name)):
                break
            f = f.f_back
        user = f
        while f is not None and f.f_code.co_name != "forward":
            f = f.f_back
        if f is not None:
            node.meta["netgeom_frame"] = (user.f_code.co_filename, user.f_lineno)
        return node


_SYM_FREE = frozenset({fx.Node, int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                       torch.memory_format})
_SYM_CONTAINERS = frozenset({tuple, list, dict, _fx_ic.immutable_list, _fx_ic.immutable_dict})
_IMMUTABLE_DICT = _fx_ic.immutable_dict
_FX_PROXY_LOG = logging.getLogger("torch.fx.proxy")  # the logger of fx's TracerBase.create_node
_FAST_NODES: list = [None]  # whether _Tracer.create_node may skip fx's own (see _fast_nodes_work)
_FAST_LOCK = threading.Lock()


class _TraceLock:
    """One trace at a time in a process (see _Tracer.trace), re-entrant per thread (the probes that decide
    the short paths trace inside a trace). Taken before _FAST_LOCK and _HOOK_LOCK, never after them."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0

    def after_fork(self) -> None:
        """In a forked child: keep this thread's hold only (the other threads are not in the child, and a
        hold of theirs would never be released), in place (this thread's ``with`` releases this object)."""
        self._cond = threading.Condition(threading.Lock())  # (another thread may have held its lock)
        if self._owner != threading.get_ident():
            self._owner, self._depth = None, 0

    @contextlib.contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._cond:
            while self._owner is not None and self._owner != me:
                self._cond.wait()
            self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                self._cond.notify_all()


_TRACE_LOCK = _TraceLock()


def _no_sym(a) -> bool:
    """Whether fx's argument walk in Graph.create_node would meet no torch.Sym* value in ``a`` (False also
    for any type this does not know, where fx's own create_node then runs)."""
    t = type(a)
    if t in _SYM_FREE:
        return True
    if t in _SYM_CONTAINERS:
        return all(_no_sym(v) for v in (a.values() if isinstance(a, dict) else a))
    return False


class _Proxy(fx.Proxy):
    """fx's Proxy, as _Tracer makes them: a torch function called on them is recorded as fx records it, but
    without fx's two pytree walks of the arguments (for their tracers) and the warnings filter its test for a
    tensor method installs and removes on every call (together about half of such a call's cost), where the
    arguments are these proxies and plain values; anything else goes through fx's own __torch_function__."""

    @classmethod
    def __torch_function__(cls, orig_method, types, args=None, kwargs=None):
        args = args if args else ()
        kwargs = kwargs if kwargs else {}
        found: list = []
        methods = _TENSOR_METHODS[0]
        if (
            methods is None
            or not _flat_tracers(args, found)
            or not _flat_tracers(kwargs.values(), found)
            or len(found) != 1
            or not (isinstance(found[0], _Tracer) and found[0].short_paths())
            or isinstance(orig_method, (torch._C.ScriptMethod, torch._ops.HigherOrderOperator))
        ):
            return fx.Proxy.__torch_function__.__func__(cls, orig_method, types, args, kwargs)
        tracer = found[0]
        if orig_method in methods or orig_method.__name__ == "__get__":  # (is_tensor_method_or_property)
            return tracer.create_proxy("call_method", orig_method.__name__, args, kwargs)
        return tracer.create_proxy(
            "call_function", orig_method, args, kwargs, name=tracer.graph._target_to_str(orig_method.__name__)
        )

    def __iadd__(self, other):
        # fx's Proxy has no __iadd__, so `h += y` fell back to `h = h + y` and every other name of h (a skip
        # connection `skip = h`) kept the old value, where eager torch changes the shared tensor: recorded as
        # operator.iadd, which the conversion reads as an in-place add (every alias sees the sum)
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})


def _tensor_methods():
    get = getattr(torch.overrides, "_get_tensor_methods", None)
    try:
        methods = get() if get is not None else None
        # the set torch.overrides.is_tensor_method_or_property reads
        ok = isinstance(methods, (set, frozenset))
        ok = ok and torch.Tensor.add in methods and torch.add not in methods
    except Exception:  # a torch without it: fx's own __torch_function__
        ok = False
    return methods if ok else None


_TENSOR_METHODS: list = [None]  # torch's set of tensor methods, read once (_fast_nodes_work)
_FLAT_LEAVES = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                          torch.memory_format})


def _flat_tracers(values, found: list) -> bool:
    """The tracers of the _Proxy values among ``values`` (plain values, or tuples and lists of them) appended
    to ``found`` once each; False where some value is anything else."""
    for a in values:
        t = type(a)
        if t is _Proxy:
            if a.tracer not in found:
                found.append(a.tracer)
        elif t in _FLAT_LEAVES:
            continue
        elif t is tuple or t is list:
            if not _flat_tracers(a, found):
                return False
        else:
            return False
    return True


_PLAIN_ARGS: dict[type, Callable] = {
    fx.Proxy: lambda tracer, a: a.node,
    _Proxy: lambda tracer, a: a.node,
    tuple: lambda tracer, a: tuple(tracer.create_arg(x) for x in a),
    list: lambda tracer, a: [tracer.create_arg(x) for x in a],
    dict: lambda tracer, a: _dict_arg(tracer, a),
    **{t: lambda tracer, a: a for t in (int, float, bool, str, type(None))},
}


def _dict_arg(tracer, a: dict):
    # fx maps a dict with string keys (the kwargs of every call) entry by entry into a new dict; other keys
    # are checked for proxies by fx's own create_arg
    if all(type(k) is str for k in a):
        return {k: tracer.create_arg(v) for k, v in a.items()}
    return fx.Tracer.create_arg(tracer, a)


_FX_WRAP: list = [None]  # fx's own _create_wrapped_func, seen at the first trace
_MATH_IDS: list = [None]  # ids of math's public callables (fx's default autowrap set)
_WRAPPED: dict[int, tuple[Callable, Callable]] = {}  # id(function) -> (function, fx's wrapper of it)


# ----------------------------------------------------------------------- fx's module patching, cheaper
# fx's trace assigns nn.Module.__call__ and nn.Module.__getattr__ (process-wide, for every thread) to its own
# wrappers for the duration of the trace. Assigning a special method on a class makes CPython update that slot
# in every subclass; nn.Module has ~350. netgeom's trace instead keeps fx's two wrappers and calls them from
#   * nn.Module._call_impl: nn.Module.__call__ (``_wrapped_call_impl``) calls ``self._call_impl`` for every
#     module that is not torch.compile'd, so a dispatcher there sees every call fx's __call__ patch sees.
#     ``_call_impl`` is no special method: assigning it only invalidates the subclasses' attribute caches;
#   * ``__getattr__`` of the classes of the traced model's modules only (a handful, each with few subclasses).
# The dispatchers call fx's wrappers only on the thread that traces (fx's own patching reroutes other threads'
# module calls into the trace too) and the original methods everywhere else. They are installed by the first
# trace that needs them and removed by the last (a lock and counts), so concurrent traces in several threads
# each see their own. A model this cannot serve exactly as fx's patching would (a class with its own __call__,
# _call_impl or __getattr__, a compiled module, a bare nn.Module) is traced with fx's own patching.
_HOOK_TLS = threading.local()  # call / getattr: fx's wrappers of this thread's trace; bypass: see call_module
_HOOK_LOCK = threading.Lock()
_ORIG_CALL_IMPL = nn.Module.__dict__["_call_impl"]
_ORIG_GETATTR = _fx_st._orig_module_getattr  # what fx's getattr wrapper itself calls
_HOOK_USERS: dict = {"_call_impl": 0}  # class -> traces using its __getattr__ dispatcher; "_call_impl" -> ...
_FX_SWAP: dict = {}  # fx's module functions substituted by the traces running now, and their count
_FX_ORIG: dict = {}  # fx's own module functions, as first seen (kept: other threads may still reach them)
_MATH_SWAP: list = [None]  # (math's entries fx's autowrap patches, their wrappers), see _math_swap
_HOOKS_WORK: list = [None]  # whether the dispatchers reach fx's wrappers in this torch (checked once)


def _dispatch_call_impl(self, *args, **kwargs):
    tls = _HOOK_TLS.__dict__
    hook = tls.get("call")
    if hook is None:
        return _ORIG_CALL_IMPL(self, *args, **kwargs)
    if tls.get("bypass") is self:
        tls["bypass"] = None
        return _ORIG_CALL_IMPL(self, *args, **kwargs)
    return hook(self, *args, **kwargs)


def _dispatch_getattr(self, name):
    hook = _HOOK_TLS.__dict__.get("getattr")
    if hook is None:
        return _ORIG_GETATTR(self, name)
    return hook(self, name)


class _ThreadHook:
    """One of fx's two nn.Module patches, as this thread's dispatcher hook (patch/revert as fx's own
    patches, so that fx's revert_all_patches/reapply_all_patches keep working)."""

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn, self.prev = name, fn, None

    def patch(self) -> None:
        self.prev = _HOOK_TLS.__dict__.get(self.name)
        setattr(_HOOK_TLS, self.name, self.fn)

    def revert(self) -> None:
        setattr(_HOOK_TLS, self.name, self.prev)


class _SwapItems:
    """Several entries of one namespace patched and reverted at once (as fx's patch records, one each)."""

    def __init__(self, frame_dict: dict, new: dict, orig: dict):
        self.frame_dict, self.new, self.orig = frame_dict, new, orig

    def patch(self) -> None:
        self.frame_dict.update(self.new)

    def revert(self) -> None:
        self.frame_dict.update(self.orig)


def _math_swap(function_ids) -> tuple[dict, dict]:
    """``math``'s entries fx's autowrap patches (public callables whose ids it collected) and the wrappers
    it patches in (``_memo_wrapped_func``'s, marked as fx marks what it patches), made again only when
    ``math``'s namespace changed."""
    d = math.__dict__
    orig = {k: v for k, v in d.items() if id(v) in function_ids and not k.startswith("_") and callable(v)}
    hit = _MATH_SWAP[0]
    if hit is not None and hit[0] == orig:  # (functions compare by identity)
        return hit
    new = {k: _memo_wrapped_func(v) for k, v in orig.items()}
    for w in new.values():
        w.__fx_already_patched = True
    _MATH_SWAP[0] = (orig, new)
    return orig, new


class _HookPatcher(_fx_st._Patcher):
    """fx's patcher, except that its two nn.Module patches become this thread's dispatcher hooks, and that
    (``math_ids``) ``math``'s functions are swapped for fx's wrappers at once with the first of them."""

    def __init__(self, math_ids=None):
        super().__init__()
        self.math_ids = math_ids

    def patch_method(self, cls, name, new_fn, deduplicate=True):
        if cls is nn.Module and name in ("__call__", "__getattr__"):
            if self.math_ids is not None and self.visit_once(math.__dict__):
                # fx's _autowrap_check of ``math``, which comes after these patches (its _autowrap_search
                # is empty for this trace); visited, so that fx never checks it again in this trace
                orig, new = _math_swap(self.math_ids)
                swap = _SwapItems(math.__dict__, new, orig)
                self.patches_made.append(swap)
                swap.patch()
            hook = _ThreadHook("call" if name == "__call__" else "getattr", new_fn)
            self.patches_made.append(hook)
            hook.patch()
            return
        super().patch_method(cls, name, new_fn, deduplicate)


@contextlib.contextmanager
def _hook_patcher():
    """fx's ``_new_patcher`` while a netgeom trace with dispatchers runs on this thread, else fx's own."""
    if not _HOOK_TLS.__dict__.get("active"):
        with _FX_ORIG["_new_patcher"]() as patcher:
            yield patcher
        return
    st = _fx_st
    prior = st.CURRENT_PATCHER
    patcher = st.CURRENT_PATCHER = _HookPatcher(_HOOK_TLS.__dict__.get("math_ids"))
    try:
        yield patcher
    finally:
        patcher.revert_all_patches()
        st.CURRENT_PATCHER = prior


class _ModuleHooks:
    """The classes whose ``__getattr__`` a trace of ``root`` routes through the dispatcher."""

    def __init__(self, classes: tuple[type, ...]):
        self.classes = classes

    @staticmethod
    def plan(root) -> _ModuleHooks | None:
        if not isinstance(root, nn.Module) or not _hooks_work():
            return None
        if nn.Module.__dict__.get("__call__") is not nn.Module.__dict__.get("_wrapped_call_impl"):
            return None
        classes = {}
        for m in root.modules():
            d = m.__dict__
            if d.get("_compiled_call_impl") is not None or "_call_impl" in d:
                return None
            classes[type(m)] = None
        for c in classes:
            if (
                c is nn.Module
                or c.__call__ is not nn.Module.__call__
                or c._call_impl not in (_ORIG_CALL_IMPL, _dispatch_call_impl)
                or c.__getattr__ not in (_ORIG_GETATTR, _dispatch_getattr)
            ):
                return None
        return _ModuleHooks(tuple(classes))

    def install(self) -> bool:
        """Install the dispatchers (those not installed yet); False, with nothing changed, if a class
        refuses the assignment (a metaclass of its own): that trace then uses fx's own patching."""
        with _HOOK_LOCK:
            done = []
            try:
                if _HOOK_USERS["_call_impl"] == 0:
                    nn.Module._call_impl = _dispatch_call_impl
                _HOOK_USERS["_call_impl"] += 1
                done.append("_call_impl")
                for c in self.classes:
                    n = _HOOK_USERS.get(c, 0)
                    if n == 0 and c.__dict__.get("__getattr__") is not _dispatch_getattr:
                        c.__getattr__ = _dispatch_getattr
                    _HOOK_USERS[c] = n + 1
                    done.append(c)
            except Exception:
                self._release(done)
                return False
            return True

    def uninstall(self) -> None:
        with _HOOK_LOCK:
            self._release(["_call_impl", *self.classes])

    @staticmethod
    def _release(users) -> None:
        for c in reversed(users):
            n = _HOOK_USERS.pop(c) - 1
            if n or c == "_call_impl":
                _HOOK_USERS[c] = n
            if n:
                continue
            if c == "_call_impl":
                nn.Module._call_impl = _ORIG_CALL_IMPL
            elif c.__dict__.get("__getattr__") is _dispatch_getattr:
                del c.__getattr__


class _HookProbe(nn.Module):
    """A module call, a call traced into, a parameter read in forward: what the dispatchers must give fx."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seq = nn.Sequential(nn.ReLU())
        self.w = nn.Parameter(torch.zeros(2, 2))

    def forward(self, x):
        return F.linear(self.seq(self.lin(x)), self.w)


def _fast_nodes_work() -> bool:
    """Whether _Tracer.create_node's and _Tracer._fx_call_module's own steps give the nodes, names, scopes and
    meta fx's create_node and call_module give, in this torch (checked once per process, on a probe module;
    else fx's own always run)."""

    def sig(tracer, g):
        return [
            (n.op, str(n.target), n.name, repr((n.args, n.kwargs)), n.type, sorted(n.meta),
             repr(n.meta.get("nn_module_stack")), tracer.node_name_to_scope.get(n.name))
            for n in g.nodes
        ]

    _hooks_work()  # (decided first: the probes below run with or without the dispatchers as traces will)
    with _FAST_LOCK:  # (the probe tracers carry their own setting: other threads' traces see no change)
        if _FAST_NODES[0] is not None:
            return _FAST_NODES[0]
        if _TENSOR_METHODS[0] is None:
            _TENSOR_METHODS[0] = _tensor_methods()
        try:
            got = []
            for fast in (False, True):  # fx's own create_node and call_module first: the reference
                t = _Tracer()
                t.fast = fast
                got.append(sig(t, t.trace(_HookProbe())))
            ok = got[0] == got[1] and len(got[0]) == 6
        except Exception:  # a torch whose fx this does not fit: fx's own create_node
            ok = False
        _FAST_NODES[0] = ok
        return ok


def _probe_tracer() -> _Tracer:
    """A tracer for _hooks_work's probes: fx's own create_node and call_module (no short-path check)."""
    t = _Tracer()
    t.fast = False
    return t


def _hooks_work() -> bool:
    """Whether the dispatchers give the graph fx's own patching gives (checked once per process, on a probe
    module), in this torch."""
    if _HOOKS_WORK[0] is None:
        st = _fx_st
        if not (
            hasattr(st, "_Patcher")
            and callable(getattr(st, "_new_patcher", None))
            and hasattr(st, "CURRENT_PATCHER")
            and nn.Module.__dict__.get("__call__") is nn.Module.__dict__.get("_wrapped_call_impl")
            and "_call_impl" in nn.Module._wrapped_call_impl.__code__.co_names
        ):
            _HOOKS_WORK[0] = False
            return False

        _HOOKS_WORK[0] = True
        try:
            want = _probe_signature(_probe_reference())
            ok = _probe_signature(_probe_tracer().trace(_HookProbe())) == want and len(want) == 6
        except Exception:  # a torch whose fx this does not fit: its own patching
            ok = False
        _HOOKS_WORK[0] = ok
    return _HOOKS_WORK[0]


def _probe_signature(g: fx.Graph) -> list[tuple]:
    return [(n.op, str(n.target), n.name, tuple(str(a) for a in n.args)) for n in g.nodes]


def _probe_reference() -> fx.Graph:
    """The graph fx's own trace gives of _HookProbe, built by fx's Graph API (its own node names), without a
    trace: fx's trace patches nn.Module.__call__ process-wide, and a module called by another thread
    meanwhile raised NameError (the check ran at the first trace of a process, while other threads may be
    running models)."""
    g = fx.Graph()
    x = g.placeholder("x")
    h = g.call_module("seq.0", (g.call_module("lin", (x,)),))
    g.output(g.call_function(F.linear, (h, g.get_attr("w"))))
    return g


@contextlib.contextmanager
def _fx_substitutions(hooks: _ModuleHooks | None, math_ids=None):
    """fx's ``_create_wrapped_func`` memoised and, with ``hooks``, its nn.Module patching through the
    dispatchers, for one trace on this thread. The substituted module functions serve other threads' fx
    traces exactly as fx's own (``_memo_wrapped_func`` returns fx's wrapper; ``_hook_patcher`` is fx's
    patcher on any thread not inside such a trace); they are swapped in by the first trace and back by the
    last."""
    st = _fx_st
    with _HOOK_LOCK:
        if not _FX_SWAP:
            wrap = getattr(st, "_create_wrapped_func", None)
            if wrap is not None and wrap is not _memo_wrapped_func and _FX_WRAP[0] in (None, wrap):
                _FX_WRAP[0] = _FX_SWAP["_create_wrapped_func"] = wrap
                st._create_wrapped_func = _memo_wrapped_func
            new = getattr(st, "_new_patcher", None)
            if new is not None and new is not _hook_patcher and _FX_ORIG.get("_new_patcher") in (None, new):
                _FX_ORIG["_new_patcher"] = _FX_SWAP["_new_patcher"] = new
                st._new_patcher = _hook_patcher
            _FX_SWAP["users"] = 0
        _FX_SWAP["users"] += 1
    tls = _HOOK_TLS.__dict__
    outer = tls.get("active"), tls.get("bypass"), tls.get("math_ids")
    if hooks is not None and not hooks.install():
        hooks = None
    tls["active"], tls["bypass"] = hooks is not None, None
    tls["math_ids"] = math_ids if hooks is not None else None
    try:
        yield
    finally:
        tls["active"], tls["bypass"], tls["math_ids"] = outer
        if hooks is not None:
            hooks.uninstall()
        with _HOOK_LOCK:
            _FX_SWAP["users"] -= 1
            if _FX_SWAP["users"] == 0:
                for name in ("_create_wrapped_func", "_new_patcher"):
                    if name in _FX_SWAP:
                        setattr(st, name, _FX_SWAP[name])
                _FX_SWAP.clear()


def _hooks_after_fork() -> None:
    """A child forked while other threads traced has one thread, which traces nothing unless it was the
    forking one inside a trace: fresh lock, and (if this thread is not inside a trace) fx's and nn.Module's
    own functions back, as after the last trace."""
    global _HOOK_LOCK, _FAST_LOCK
    _HOOK_LOCK = threading.Lock()
    _FAST_LOCK = threading.Lock()  # (a check of the short paths in another thread never ends here)
    _TRACE_LOCK.after_fork()
    if _HOOK_TLS.__dict__.get("active"):
        return  # this thread's trace goes on: it removes what it uses (others' uses stay, inert)
    for c in list(_HOOK_USERS):
        if c != "_call_impl" and c.__dict__.get("__getattr__") is _dispatch_getattr:
            del c.__getattr__
    _HOOK_USERS.clear()
    _HOOK_USERS["_call_impl"] = 0
    nn.Module._call_impl = _ORIG_CALL_IMPL
    for name in ("_create_wrapped_func", "_new_patcher"):
        if name in _FX_SWAP:
            setattr(_fx_st, name, _FX_SWAP[name])
    _FX_SWAP.clear()
    patcher = getattr(_fx_st, "CURRENT_PATCHER", None)
    if isinstance(patcher, _HookPatcher):  # the patches of a trace on a thread that is not here
        patcher.revert_all_patches()
        _fx_st.CURRENT_PATCHER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_hooks_after_fork)


def _memo_wrapped_func(fn):
    """fx's ``_create_wrapped_func(fn)``, made once per function (kept with it, so that its id stays its
    own)."""
    hit = _WRAPPED.get(id(fn))
    if hit is None or hit[0] is not fn:
        if len(_WRAPPED) >= 4096:
            _WRAPPED.clear()
        hit = _WRAPPED[id(fn)] = (fn, _FX_WRAP[0](fn))
    return hit[1]


_TORCH_DIR = str(__import__("pathlib").Path(torch.__file__).parent)
_NETGEOM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_OWN = __file__
_INTERNAL: dict[str, bool] = {}  # file name -> whether it is this file or torch's (asked once per frame)


def _internal_file(name: str) -> bool:
    got = _INTERNAL.get(name)
    if got is None:
        if len(_INTERNAL) > 4096:
            _INTERNAL.clear()
        got = _INTERNAL[name] = name == _OWN or name.startswith(_TORCH_DIR)
    return got


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def _frame_line(frame: tuple[str, int] | None) -> str:
    """``file.py:42 (`code`)`` of a recorded ``(file, line)``."""
    if frame is None:
        return ""
    import linecache

    fn, line = frame
    if line is None:
        return fn.rsplit("/", 1)[-1]
    return f"{fn.rsplit('/', 1)[-1]}:{line} (`{linecache.getline(fn, line).strip()}`)"


def _user_frame(exc: BaseException) -> str:
    """`` at file.py:42 (`code`)``: the innermost frame of ``exc``'s traceback outside torch and netgeom
    (the user's line an fx trace failed on), or ``""``."""
    tb, where = exc.__traceback__, ""
    while tb is not None:
        fn = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not fn.startswith((_TORCH_DIR, _NETGEOM_DIR)):
            where = f" at {_frame_line((fn, tb.tb_lineno))}"
        tb = tb.tb_next
    return where


def _user_line(stack: str | None) -> str:
    """``file.py:42 (`code`)`` of the innermost frame outside torch, from an fx stack trace."""
    if not stack:
        return ""
    frames = [m for m in _FRAME.finditer(stack) if not m.group(1).startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    short = f.group(1).rsplit("/", 1)[-1]
    return f"{short}:{f.group(2)} (`{f.group(4).strip()}`)"


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", repr(t))


_STORAGES = iter(range(1, sys.maxsize))  # (next() on it is atomic under the GIL)


@dataclasses.dataclass
class _Ref:
    """A traced tensor: the PL node holding its (flat) value, its per-sample shape and a probe value.

    ``storage`` names the memory the tensor lives in, as eager torch allocates it: views (``view``,
    ``unflatten``, an eval ``Dropout``, ``Identity``) share their source's, copies (``torch.cat`` of one
    tensor) get their own; an in-place operation changes every tensor of its storage (see ``_trace``)."""

    index: int
    shape: tuple[int, ...]
    value: torch.Tensor  # the probe batch, shaped (B, *shape), float64
    storage: int = dataclasses.field(default_factory=lambda: next(_STORAGES))


def _always_view(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether torch's ``reshape``/``flatten`` from ``(B, *in_shape)`` to ``(B, *out_shape)`` returns a view
    whatever the input's strides: when it only splits axes (and adds or drops axes of size 1). Merging two
    axes views a contiguous tensor but copies one whose strides do not allow it (a channels_last
    activation), which the reader cannot see."""
    a = [d for d in in_shape if d != 1]
    b = [d for d in out_shape if d != 1]
    j = 0
    for d in a:
        p = 1
        while p < d and j < len(b):
            p *= b[j]
            j += 1
        if p != d:
            return False
    return j == len(b)


@dataclasses.dataclass
class _Param:
    """A parameter or buffer read in ``forward`` (an fx ``get_attr``): usable only as ``F.linear``'s weight
    or bias."""

    name: str
    tensor: torch.Tensor


# per-sample axes a module needs (channels first)
_NEED_AXES = {
    nn.Conv1d: 2,
    nn.Conv2d: 3,
    nn.BatchNorm2d: 3,
    nn.AvgPool1d: 2,
    nn.AvgPool2d: 3,
    nn.AdaptiveAvgPool1d: 2,
    nn.AdaptiveAvgPool2d: 3,
}


class _Builder:
    def __init__(self, model: nn.Module, masks, max_entries: int, workers: Callable[[], None]):
        self.model = model
        self.workers = workers  # checks torch's threads for subnormal flushing (once per trace)
        self.model_name = type(model).__name__
        self.masks = masks
        self.max_entries = max_entries
        self.nodes: list[PLNode] = []
        self.last_fx: dict[int, fx.Node] = {}  # PL index -> fx node whose value it holds last
        self.real_users: dict[fx.Node, int] = {}
        self.used_masks: set[str] = set()
        self.training_modules: list[str] = []
        self.functional_weights: set[str] = set()  # parameters read through F.linear
        self.has_weight = False
        self.B = 2
        self._submodules: dict[str, nn.Module] = {}
        self._sources: dict[fx.Node, str] = {}
        self._canonical: dict[int, str] | None = None

    # ------------------------------------------------------------------ helpers
    def submodule(self, target: str) -> nn.Module:
        m = self._submodules.get(target)
        if m is None:
            m = self._submodules[target] = self.model.get_submodule(target)
        return m

    def source(self, node: fx.Node) -> str:
        # asked again for the node whose weight an affine node takes (and in error messages): made once
        got = self._sources.get(node)
        if got is None:
            got = self._sources[node] = self._source(node)
        return got

    def _source(self, node: fx.Node) -> str:
        frame = node.meta.get("netgeom_frame")
        if frame is not None:
            line = _frame_line(frame)
        else:
            line = _user_line(node.meta.get("stack_trace") or getattr(node, "stack_trace", None))
        at = f" at {line}" if line else ""
        if node.op == "call_module":
            m = self.submodule(node.target)
            return f"module '{node.target}' ({type(m).__name__}){at}"
        kind = "method" if node.op == "call_method" else "function"
        return f"{kind} {_target_name(node)} (node '{node.name}'){at}"

    def refuse(self, node: fx.Node, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"cannot read {self.model_name}: {self.source(node)} {why}; supported: "
            + ", ".join(SUPPORTED_LAYERS)
        )

    def add_node(self, fxn: fx.Node | None, **kw) -> int:
        idx = len(self.nodes)
        kw.setdefault("name", fxn.name if fxn is not None else "input")
        if "source" not in kw:
            kw["source"] = self.source(fxn) if fxn is not None else "input"
        self.nodes.append(PLNode(index=idx, _max_entries=self.max_entries, **kw))
        if fxn is not None:
            self.last_fx[idx] = fxn
        return idx

    def check_batch(self, fxn: fx.Node, y: torch.Tensor, ref: _Ref, *, same_numel: bool) -> tuple[int, ...]:
        if not torch.is_tensor(y) or y.ndim < 1 or y.shape[0] != self.B:
            raise self.refuse(fxn, "does not keep the batch axis first (netgeom reads batch-first networks)")
        shape = tuple(y.shape[1:])
        if same_numel and math.prod(shape) != math.prod(ref.shape):
            raise self.refuse(fxn, f"changes the per-sample size ({ref.shape} -> {shape})")
        return shape

    # ------------------------------------------------------------------ affine ops
    def affine(
        self, fxn: fx.Node, ref: _Ref, op: _AffineOp, y: torch.Tensor, module_name: str | None
    ) -> _Ref:
        """Append ``op`` to the affine node holding ``ref`` if it can be folded in, else start a new node."""
        prev = self.nodes[ref.index]
        holder = self.last_fx.get(ref.index)
        fold = (
            prev.op == "affine"
            and holder is not None
            and self.real_users.get(holder, 0) == 1
            and not (op.weighted and prev.param_name is not None)
        )
        if fold:
            prev._ops.append(op)
            prev.shape = op.out_shape
            self.last_fx[ref.index] = fxn
            if op.weighted:
                self.set_weight(prev, op, fxn, module_name)
            elif op.type_name.startswith("BatchNorm") and prev.kernel is not None and _scales_kernel(
                prev._ops[-2], op, prev.kernel
            ):
                # the kernel carries the scale of a BatchNorm that directly follows it (channel graphs use it)
                s = op.params["scale"]
                prev.kernel = prev.kernel * s.reshape((-1,) + (1,) * (prev.kernel.ndim - 1))
            return _Ref(ref.index, op.out_shape, y)
        idx = self.add_node(
            fxn,
            op="affine",
            inputs=(ref.index,),
            shape=op.out_shape,
            in_shape=ref.shape,
            kind="affine",
            module=module_name,
            _ops=[op],
            _first_name=module_name or fxn.name,
        )
        if op.weighted:
            self.set_weight(self.nodes[idx], op, fxn, module_name)
        return _Ref(idx, op.out_shape, y)

    def set_weight(self, node: PLNode, op: _AffineOp, fxn: fx.Node, module_name: str | None) -> None:
        node.param_name = op.param_name
        node.mask = op.mask
        node.kernel = op.params["weight"]
        node.kind = "linear" if op.type_name == "Linear" else op.type_name.lower()
        node.module = module_name
        node.name = fxn.name
        node.source = self.source(fxn)
        node._first_name = module_name or fxn.name
        self.has_weight = True

    def masked_weight(self, name: str, m: nn.Module) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        pname = f"{name}.weight" if name else "weight"
        if self._canonical is None:
            # a parameter shared by several modules (tied weights) has one name, its first (as
            # named_parameters and prunable_parameters list it): its mask applies to every use
            self._canonical = {id(p): n for n, p in self.model.named_parameters()}
        pname = self._canonical.get(id(m.weight), pname)
        w = _f64(m.weight)
        mask = None
        if self.masks is not None and pname in self.masks:
            mask = _as_mask(self.masks[pname], pname, w.shape)
            w.masked_fill_(mask == 0, 0.0)  # (pruned = absent: whatever is stored there, even NaN; w is ours)
            self.used_masks.add(pname)
        return pname, w, mask

    def run_op(self, fxn: fx.Node, op: _AffineOp, ref: _Ref) -> torch.Tensor:
        try:
            # (under trace's no_grad)
            x = ref.value.reshape(self.B, *op.in_shape)
            if op.fn is _linear_fn and x.numel() * op.params["weight"].shape[0] <= 1 << 15:
                # the probe of a small Linear by numpy on this thread: torch's tiny threaded GEMM costs
                # far more in thread wake-ups than in arithmetic, and each torch call costs several times
                # a numpy one once other work has pushed torch's code out of the caches (right after a
                # slice). The probe only carries shapes and test values.
                p = op.params
                y = x.numpy() @ p["weight"].numpy().T
                if "bias" in p:
                    y += p["bias"].numpy()
                return torch.from_numpy(y)
            return op(x)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"layer '{op.name}' ({op.type_name}) cannot take an input of shape {ref.shape}: {exc}"
            ) from None

    def module_op(self, fxn: fx.Node, m: nn.Module, ref: _Ref) -> _Ref:
        name = fxn.target
        tname = type(m).__name__
        nd = _NEED_AXES.get(type(m))
        if nd is not None and len(ref.shape) != nd:
            raise ValueError(
                f"layer '{name}' ({tname}) needs a per-sample input of {nd} axes (channels first), got shape "
                f"{ref.shape}; pass input_shape=(C, ...) or reshape before it"
            )
        if isinstance(m, nn.BatchNorm1d) and len(ref.shape) not in (1, 2):
            raise ValueError(f"layer '{name}' (BatchNorm1d) needs (C,) or (C, L) per sample, got {ref.shape}")
        fan = 1
        if isinstance(m, nn.Linear):
            if ref.shape[-1] != m.in_features:
                raise ValueError(
                    f"layer '{name}' (Linear) expects {m.in_features} inputs but receives {ref.shape[-1]}"
                )
            pname, w, mask = self.masked_weight(name, m)
            params = {"weight": w}
            if m.bias is not None:
                params["bias"] = _f64(m.bias)
            op = _AffineOp(
                name, tname, ref.shape, (), _linear_fn, params, m.in_features + 1, True, pname, mask, m
            )
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if m.padding_mode != "zeros":
                raise UnsupportedLayerError(
                    f"{tname} '{name}' with padding_mode={m.padding_mode!r} is not supported; use 'zeros'"
                )
            pname, w, mask = self.masked_weight(name, m)
            params = {"weight": w}
            if m.bias is not None:
                params["bias"] = _f64(m.bias)
            fan = math.prod(w.shape[1:]) + 1
            fn = _conv_fn(1 if isinstance(m, nn.Conv1d) else 2, m.stride, m.padding, m.dilation, m.groups)
            op = _AffineOp(name, tname, ref.shape, (), fn, params, fan, True, pname, mask, m)
            op.conv = (tuple(m.stride), m.padding, tuple(m.dilation), int(m.groups))
        elif isinstance(m, _BN):
            scale, shift = _bn_scale_shift(m, f"module '{name}' ({tname})")
            op = _AffineOp(name, tname, ref.shape, (), _bn_fn, {"scale": scale, "shift": shift}, 2, module=m)
        else:  # pools

            def fn(x, p, bias, mm=m):
                return mm(x)

            op = _AffineOp(name, tname, ref.shape, (), fn, {}, 0, module=m)
        y = self.run_op(fxn, op, ref)
        op.out_shape = self.check_batch(fxn, y, ref, same_numel=False)
        if op.fan_in == 0:
            kernel = _fmt_kernel(m.kernel_size) if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)) else None
            op.fan_in = _fan_in(tname, ref.shape, op.out_shape, kernel)
        return self.affine(fxn, ref, op, y, name)

    def func_affine(self, fxn: fx.Node, ref: _Ref, func, args, kwargs, type_name: str) -> _Ref:
        op = _AffineOp(fxn.name, type_name, ref.shape, (), _const_fn(func, args, kwargs), {}, 0)
        y = self.run_op(fxn, op, ref)
        op.out_shape = self.check_batch(fxn, y, ref, same_numel=False)
        kernel = (
            _fmt_kernel(args[0] if args else kwargs["kernel_size"]) if type_name.startswith("avg") else None
        )
        op.fan_in = _fan_in(type_name, ref.shape, op.out_shape, kernel)
        return self.affine(fxn, ref, op, y, None)

    def func_linear(self, fxn: fx.Node, ref: _Ref, weight: _Param, bias: _Param | None) -> _Ref:
        """``F.linear(x, self.weight, self.bias)`` with parameters of the model: an affine node whose weight
        is that parameter (masks apply to its name), like an ``nn.Linear``."""
        w = weight.tensor
        if w.ndim != 2 or not w.is_floating_point():
            raise self.refuse(fxn, f"reads '{weight.name}' of shape {tuple(w.shape)} as a linear weight")
        if ref.shape[-1:] != (w.shape[1],):
            raise ValueError(
                f"{self.source(fxn)} multiplies an input of shape {ref.shape} by '{weight.name}' of shape "
                f"{tuple(w.shape)}: expects {w.shape[1]} inputs"
            )
        if bias is not None and (bias.tensor.ndim != 1 or bias.tensor.shape[0] != w.shape[0]):
            raise self.refuse(fxn, f"adds '{bias.name}' of shape {tuple(bias.tensor.shape)} as a linear bias")
        pname = weight.name
        if w.numel() >= _PARALLEL_NUMEL:  # (a tensor attribute that is no parameter or buffer)
            self.workers()
        w = _f64(w)
        mask = None
        if self.masks is not None and pname in self.masks:
            mask = _as_mask(self.masks[pname], pname, w.shape)
            w.masked_fill_(mask == 0, 0.0)  # (pruned = absent: whatever is stored there, even NaN; w is ours)
            self.used_masks.add(pname)
        params = {"weight": w}
        if bias is not None:
            params["bias"] = _f64(bias.tensor)
        self.functional_weights.add(pname)
        fan = w.shape[1] + 1
        op = _AffineOp(fxn.name, "Linear", ref.shape, (), _linear_fn, params, fan, True, pname, mask)
        y = self.run_op(fxn, op, ref)
        op.out_shape = self.check_batch(fxn, y, ref, same_numel=False)
        return self.affine(fxn, ref, op, y, None)

    # ------------------------------------------------------------------ other nodes
    def relu(self, fxn: fx.Node, ref: _Ref, slope: float) -> _Ref:
        idx = self.add_node(fxn, op="relu", inputs=(ref.index,), shape=ref.shape, negative_slope=float(slope))
        y = torch.relu(ref.value) if slope == 0 else F.leaky_relu(ref.value, slope)
        return _Ref(idx, ref.shape, y)

    def maxpool(
        self, fxn: fx.Node, ref: _Ref, dim: int, kernel, stride, padding, dilation, ceil_mode
    ) -> _Ref:
        if len(ref.shape) != dim + 1:
            want = "(C, L)" if dim == 1 else "(C, H, W)"
            raise UnsupportedLayerError(
                f"{self.source(fxn)} receives a per-sample input of shape {ref.shape}; MaxPool{dim}d needs "
                f"{want} (a max-pooling over the batch or a flat vector is not read)"
            )

        def tup(v, default=None):
            if v is None or (isinstance(v, (tuple, list)) and len(v) == 0):
                v = default
            v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * dim
            return tuple(int(a) for a in v)

        k = tup(kernel)
        p = {
            "dim": dim,
            "kernel": k,
            "stride": tup(stride, k),
            "padding": tup(padding),
            "dilation": tup(dilation),
            "ceil_mode": bool(ceil_mode),
        }
        key = (dim, ref.shape, *(p[a] for a in ("kernel", "stride", "padding", "dilation", "ceil_mode")))
        checked = _CHECKED_POOLS.get(key)
        flat = ref.value.reshape(self.B, -1)
        if checked is not None:
            # windows already checked against torch for this input shape and these pooling arguments (a
            # function of them alone, kept with them): the probe is their gather, without torch's max-pool,
            # whose multithreaded kernel wakes the intra-op thread pool even for a tiny probe (milliseconds
            # on a busy machine), and by numpy (see run_op)
            out_shape, starts, windows, gather = checked
            p["starts"] = [t.clone() for t in starts]
            windows = windows.clone()  # (each graph its own: a node's windows are public)
            a = flat.numpy()
            padded = np.concatenate([a, np.full((self.B, 1), -np.inf, dtype=a.dtype)], 1)
            y = torch.from_numpy(padded[:, gather.numpy()].max(-1).reshape(self.B, *out_shape))
            idx = self.add_node(
                fxn, op="maxpool", inputs=(ref.index,), shape=out_shape, in_shape=ref.shape, windows=windows,
                _pool=p,
            )
            return _Ref(idx, out_shape, y)
        padded = torch.cat([flat, torch.full((self.B, 1), -math.inf, dtype=flat.dtype)], 1)
        f = F.max_pool1d if dim == 1 else F.max_pool2d
        # torch's max-pooling runs on its threads at any size: flushing there could pick another maximum
        # among subnormal probe values and fail the check below
        self.workers()
        try:
            y = f(ref.value, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"])
        except RuntimeError as exc:
            raise ValueError(f"{self.source(fxn)} cannot take an input of shape {ref.shape}: {exc}") from None
        out_shape = self.check_batch(fxn, y, ref, same_numel=False)
        p["starts"] = _pool_starts(out_shape, p)
        windows = _pool_windows(ref.shape, out_shape, p)
        idx = self.add_node(
            fxn,
            op="maxpool",
            inputs=(ref.index,),
            shape=out_shape,
            in_shape=ref.shape,
            windows=windows,
            _pool=p,
        )
        # the windows are the contract other code reads: they must reproduce torch's max-pooling exactly
        mine = padded[:, windows.clamp(min=-1) % padded.shape[1]].amax(-1)
        if not torch.equal(mine, y.reshape(self.B, -1)):
            raise AssertionError(f"max-pool windows of {self.source(fxn)} do not reproduce torch")
        node = self.nodes[idx]
        vals, pos = node.pool(flat, return_indices=True)
        chosen = torch.gather(windows.expand(self.B, -1, -1), 2, pos.unsqueeze(-1)).squeeze(-1)
        if (chosen < 0).any() or not torch.equal(torch.gather(flat, 1, chosen), vals):
            raise AssertionError(f"max-pool argmax positions of {self.source(fxn)} do not match the windows")
        if len(_CHECKED_POOLS) >= 1024:
            _CHECKED_POOLS.clear()
        gather = windows.clamp(min=-1) % padded.shape[1]
        _CHECKED_POOLS[key] = (out_shape, [t.clone() for t in p["starts"]], windows.clone(), gather)
        return _Ref(idx, out_shape, y)

    def add(self, fxn: fx.Node, a: _Ref, b: _Ref) -> _Ref:
        if a.shape != b.shape:
            raise self.refuse(fxn, f"adds tensors of different shapes {a.shape} and {b.shape} (broadcasting)")
        idx = self.add_node(fxn, op="add", inputs=(a.index, b.index), shape=a.shape)
        return _Ref(idx, a.shape, a.value + b.value)

    def cat(self, fxn: fx.Node, refs: list[_Ref], dim: int) -> _Ref:
        nd = len(refs[0].shape) + 1
        d = dim + nd if dim < 0 else dim
        if d != 1:
            raise self.refuse(
                fxn, f"concatenates along dim {dim}; only the channel axis (dim 1) is supported"
            )
        rest = {r.shape[1:] for r in refs}
        if len(rest) != 1 or any(len(r.shape) + 1 != nd for r in refs):
            raise self.refuse(fxn, f"concatenates tensors of shapes {[r.shape for r in refs]}")
        if len(refs) == 1:
            # torch.cat always copies: the same values in memory of their own (an in-place operation on
            # the one tensor concatenated leaves the concatenation as it was)
            return _Ref(refs[0].index, refs[0].shape, refs[0].value)
        shape = (sum(r.shape[0] for r in refs), *refs[0].shape[1:])
        idx = self.add_node(fxn, op="cat", inputs=tuple(r.index for r in refs), shape=shape)
        return _Ref(idx, shape, torch.cat([r.value for r in refs], 1))


def _overridden_base(m: nn.Module) -> type | None:
    """The supported module class ``m`` is an instance of whose computation ``type(m)`` overrides (its
    ``forward``, or a convolution's ``_conv_forward``), or None. torch's QAT Linear/Conv2d
    (``torch.ao.nn.qat``) are such subclasses: fx keeps them as leaves, and isinstance alone read them as
    float layers."""
    cls = type(m)
    if cls in _LEAVES:
        return None
    for base in _LEAVES:
        if isinstance(m, base) and (
            cls.forward is not base.forward
            or getattr(cls, "_conv_forward", None) is not getattr(base, "_conv_forward", None)
        ):
            return base
    return None


def _kernel_in_shape(node: PLNode) -> tuple[int, ...] | None:
    """One sample's shape as the weighted op of an affine node receives it (after the weight-free ops folded
    in front of it and a reshape, so not the node's ``in_shape``); None for a weight-free node."""
    for op in node._ops:
        if op.weighted:
            return tuple(op.in_shape)
    return None


def _scales_kernel(w: _AffineOp, bn: _AffineOp, kernel: torch.Tensor) -> bool:
    """Whether the BatchNorm ``bn``, right after the weighted op ``w``, scales ``w``'s output features, so
    that its scale folds into ``kernel`` along the kernel's first axis: no reshape between them (BN's
    channels are axis 0 of ``w``'s output), and that axis is ``w``'s output features (a convolution's output
    channels, a Linear's outputs on a flat input; a Linear on a ``(C, L)`` sample maps the last axis, and a
    BatchNorm1d(C) after it scales the other one)."""
    if not w.weighted or bn.in_shape != w.out_shape or bn.params["scale"].shape[0] != kernel.shape[0]:
        return False
    return w.type_name != "Linear" or len(w.in_shape) == 1


# (dim, input shape, kernel, stride, padding, dilation, ceil_mode) -> (output shape, window starts, windows,
# gather index of the windows into the input padded with -inf), for the max-poolings whose windows
# (_pool_windows, a function of these alone) were checked against torch's max-pooling in this process
_CHECKED_POOLS: dict[tuple, tuple] = {}


def _fan_in(type_name: str, in_shape, out_shape, kernel) -> int:
    """An upper bound on the inputs one output of a weight-free linear op reads, plus one (for the
    rounding-error bounds of reduced-precision evaluation)."""
    if kernel is not None:
        return math.prod(kernel) + 1
    if "adaptive" in type_name.lower():
        # torch pools the last 1 or 2 axes of the batched tensor, which are the last of one sample's: a
        # flat (n,) sample under the 1-d pool (the batch then reads as channels), both axes of a (C, L)
        # sample under the 2-d one. A window spans at most ceil(in / out) + 1 positions per axis
        d = 2 if type_name.lower().endswith("2d") else 1
        return math.prod(math.ceil(a / b) + 1 for a, b in zip(in_shape[-d:], out_shape[-d:])) + 1
    return max(1, math.ceil(math.prod(in_shape) / max(1, math.prod(out_shape)))) + 1


def _pool_starts(out_shape, p) -> list[torch.Tensor]:
    """First input position of every window, per spatial axis."""
    return [torch.arange(o) * s - q for o, s, q in zip(out_shape[1:], p["stride"], p["padding"])]


def _pool_windows(in_shape, out_shape, p) -> torch.Tensor:
    """``(size, k)`` flat input indices of every max-pool window, ``-1`` for padding positions."""
    C, spatial = in_shape[0], in_shape[1:]
    tables = []
    for d, n in enumerate(spatial):
        o = torch.arange(out_shape[1 + d]).unsqueeze(1)
        j = torch.arange(p["kernel"][d]).unsqueeze(0)
        pos = o * p["stride"][d] - p["padding"][d] + j * p["dilation"][d]
        tables.append(torch.where((pos >= 0) & (pos < n), pos, torch.full_like(pos, -1)))
    if len(spatial) == 1:
        win = tables[0]  # (L_out, k)
    else:
        th, tw = tables
        W = spatial[1]
        h = th[:, None, :, None]
        w = tw[None, :, None, :]
        win = torch.where((h >= 0) & (w >= 0), h * W + w, torch.full((1,), -1))
        win = win.reshape(th.shape[0] * tw.shape[0], -1)
    plane = math.prod(spatial)
    offs = (torch.arange(C) * plane).reshape(C, 1, 1)
    full = torch.where(win.unsqueeze(0) >= 0, win.unsqueeze(0) + offs, torch.full((1,), -1))
    return full.reshape(-1, win.shape[1]).to(torch.long)


def _as_mask(value, pname: str, shape) -> torch.Tensor:
    t = torch.as_tensor(value.detach().cpu() if torch.is_tensor(value) else value)
    if t.dtype != torch.bool:
        if not (
            t.is_floating_point()
            or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
        ):
            raise TypeError(f"mask for '{pname}' must be boolean (or 0/1), got dtype {t.dtype}")
        if not torch.isin(t, torch.tensor([0, 1], dtype=t.dtype)).all():
            raise ValueError(f"mask for '{pname}' must be boolean (or 0/1), got values other than 0 and 1")
        t = t.to(torch.bool)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"mask for '{pname}' has shape {tuple(t.shape)}, but the weight has shape {tuple(shape)}"
        )
    return t


def _count_real_users(graph: fx.Graph, alias_like) -> dict[fx.Node, int]:
    """Users of each node, counting through reshapes/dropouts (which create no PL node)."""
    counts: dict[fx.Node, int] = {}
    for n in reversed(list(graph.nodes)):
        c = 0
        for u in n.users:
            meta = (u.op == "call_method" and u.target in _META_METHODS) or (
                u.target is getattr and len(u.args) > 1 and u.args[1] in _META_ATTRS
            )
            if not meta:  # x.size(0) and x.shape read no values
                c += counts.get(u, 1) if alias_like(u) else 1
        counts[n] = c
    return counts


def _no_hooks(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _sequential_graph(model: nn.Module) -> fx.Graph | None:
    """The graph ``torch.fx`` traces for a plain ``nn.Sequential`` (nested ones too) of modules it reads as
    leaves, built directly: one ``call_module`` node per leaf in call order, named by fx's own namespace.

    Symbolic tracing costs about a millisecond of proxies and stack traces even for a 3-layer MLP, while
    this walk costs microseconds; the graph then goes through the same conversion as a traced one. Anything
    else (a subclass with its own forward, a module fx would trace into, hooks) returns ``None``: trace it.
    """
    from torch.nn.modules import module as _m

    if type(model) is not nn.Sequential or not _no_hooks(model):
        return None
    if any(
        getattr(_m, h, None)
        for h in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    ):
        return None
    paths: dict[int, str] = {}
    for name, m in model.named_modules():  # a module registered twice is called by its first path, as fx
        paths.setdefault(id(m), name)
    leaves: list[str] = []

    def walk(seq: nn.Module) -> bool:
        for m in seq._modules.values():
            if type(m) is nn.Sequential and _no_hooks(m):
                if not walk(m):
                    return False
            elif (type(m) in _LEAVES or getattr(type(m), "netgeom_linear", False)) and _no_hooks(m):
                leaves.append(paths[id(m)])
            else:
                return False
        return True

    if not walk(model):
        return None
    # the graph is a function of the leaves' paths alone (and is only read): built once per path list
    key = tuple(leaves)
    graph = _SEQUENTIAL_GRAPHS.get(key)
    if graph is None:
        graph = fx.Graph()
        x = graph.placeholder("input")
        for target in leaves:
            x = graph.call_module(target, (x,))
        graph.output(x)
        if len(_SEQUENTIAL_GRAPHS) >= 256:
            _SEQUENTIAL_GRAPHS.clear()
        _SEQUENTIAL_GRAPHS[key] = graph
    return graph


_SEQUENTIAL_GRAPHS: dict[tuple[str, ...], fx.Graph] = {}


_NUMPY_CHECK = 1 << 16  # entries from which finiteness is checked by torch's fused norms
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _finite_norms(tensors: list[torch.Tensor]) -> list[bool]:
    """Per tensor, True if every entry is proven finite. A small model's CPU tensors are checked entry by
    entry (numpy); others by their 2-norms, one fused call for all of them (a NaN or inf entry makes the norm
    NaN or inf): False (check the entries) where a norm overflowed, for non-float tensors, or if the fused
    call fails."""
    idx = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    out = [False] * len(tensors)
    if not idx:
        return out
    if sum(tensors[i].numel() for i in idx) <= _NUMPY_CHECK and all(
        t.device.type == "cpu" and t.layout == torch.strided and t.dtype in _NUMPY_FLOATS
        for t in (tensors[i] for i in idx)
    ):
        # a small model's tensors, entry by entry by numpy: torch's fused norm costs several times more
        # right after other work (a slice) has pushed torch's code out of the caches
        # (a finite sum proves every entry finite, in one numpy call: an inf or NaN entry makes the sum inf
        # or NaN; summed in float64, finite float16/32 entries never overflow it, and a float64 sum that does
        # reads as not proven: the caller checks the entries)
        with np.errstate(over="ignore", invalid="ignore"):  # (also under a caller's np.seterr(all="raise"))
            for i in idx:
                out[i] = math.isfinite(tensors[i].detach().numpy().sum(dtype=np.float64))
        return out
    try:
        with torch.no_grad():
            norms = torch._foreach_norm([tensors[i] for i in idx])
            if len({(v.dtype, v.device) for v in norms}) > 1:
                norms = [v.double().cpu() for v in norms]
            vals = torch.stack(norms).tolist()
    except (RuntimeError, TypeError, AttributeError):  # devices or dtypes the fused call does not mix
        return out
    for i, v in zip(idx, vals):
        out[i] = math.isfinite(v)
    return out


def _check_trace_masks(masks, model: nn.Module):
    """Masks checked by :func:`netgeom._validation.check_masks` (one validation path for every mask form),
    except that a key naming a parameter that is not a module's weight is kept aside: it is valid if the
    trace reads that parameter through ``F.linear``, and a key naming a module weight computed on access
    (``torch.nn.utils.parametrize``), which the trace reads as computed. Returns the masks and those keys."""
    if masks is None or isinstance(masks, (list, tuple)):
        return check_masks(masks, model, allow_empty=True), set()
    from ..pruning.masks import _prunable_names

    plain = check_masks(masks, None, allow_empty=True)  # forms, 0/1 values, no biases
    try:
        # the names only: their forward order would cost a second fx trace (and its error, not trace's own)
        prunable = set(_prunable_names(model))
    except ValueError:  # no Linear/Conv module: F.linear may still read parameters
        prunable = set()
    params = dict(model.named_parameters())
    # a prunable weight that is no parameter is computed on access (parametrize, prune): the trace reads
    # the module's weight as computed, so a mask of it is applied there like any other
    aside = {k for k in plain if (k not in prunable and k in params) or (k in prunable and k not in params)}
    rest = {k: v for k, v in plain.items() if k not in aside}
    if rest and not prunable:
        raise UnknownNameError(f"masks: key '{next(iter(rest))}' names no parameter of the model")
    if rest:
        check_masks(rest, model, allow_empty=True)  # names the unknown key
    return plain, aside


def _get_attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _infer_input_shape(model: nn.Module, graph: fx.Graph) -> tuple[int, ...]:
    for n in graph.nodes:
        if n.op == "call_module":
            m = model.get_submodule(n.target)
            if isinstance(m, nn.Linear):
                return (m.in_features,)
            # a flat input passes these unchanged (a Flatten of (B, n) is (B, n)), so a first Linear decides
            if isinstance(m, (_BN, _SKIPPED, _ACTIVATIONS, nn.Flatten)):
                continue
            break
        elif n.op in ("call_function", "call_method"):
            t = n.target
            if t is F.linear and len(n.args) > 1 and getattr(n.args[1], "op", None) == "get_attr":
                w = _get_attr(model, n.args[1].target)
                if torch.is_tensor(w) and w.ndim == 2:
                    return (w.shape[1],)
                break
            if t in _RELU_FUNCS or t in _LEAKY_FUNCS or t in _DROPOUT_FUNCS or t in _ADD_FUNCS:
                continue
            if t in (torch.flatten, "flatten", "view", "reshape", "contiguous", "size", "dim", getattr):
                continue
            break
    raise ValueError(
        "the model starts with a convolution or pooling layer, so the input shape is needed: pass "
        "input_shape=(C, H, W) (or set model.input_shape)"
    )


def trace(
    model: nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    max_entries: int = 2**27,
) -> PLGraph:
    """Trace ``model`` (any ``nn.Module`` that ``torch.fx`` can trace) into a :class:`PLGraph`.

    Parameters
    ----------
    model : the network; read with eval semantics (BatchNorm running statistics, no dropout) whatever its
        mode — a model in training mode with such modules gets a warning saying so. Never modified. Its
        parameters are read exactly into float64 and the graph computes in float64: the network analysed is
        the real-arithmetic one with these weights, not ``model(x)``'s own rounding. For float32 that
        differs by float32 rounding; a float16/bfloat16 model's own forward rounds far more (near a
        boundary its activation pattern can differ), so such a model gets a warning, once per process.
    masks : a ``Masks``, a mapping parameter name -> boolean (or 0/1) tensor, or a per-layer list, checked
        by :func:`netgeom._validation.check_masks`; each names the weight of a ``Linear``/``Conv``.
    input_shape : one sample's shape (no batch axis); default ``model.input_shape``, or ``(in_features,)``
        of a first ``Linear``. Needed when the model starts with a convolution or pooling.
    max_entries : largest dense matrix one affine node's :meth:`PLNode.matrix` may unroll to.

    Example
    -------
    >>> from torch import nn
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc2(torch.relu(self.fc1(x)) + x)
    >>> g = trace(Block())
    >>> [n.op for n in g.nodes], g.is_chain
    (['input', 'affine', 'relu', 'add', 'affine', 'output'], False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    max_entries = check_int(max_entries, "max_entries", minimum=1)
    named = list(model.named_parameters()) + list(model.named_buffers())
    _check_root(model, named)
    _warn_low_precision(named)
    # A float32 weight of 1e-40 must not read as 0: the calling thread keeps subnormals throughout. torch's
    # OpenMP threads keep the flush state they started with, and checking it wakes them (0.03 ms idle,
    # 0.2-0.3 ms right after a slice, milliseconds on a busy machine; they spin after, taking a core from
    # what runs next). They compute the numbers the graph keeps (weights, biases, BatchNorm statistics,
    # masks) only for tensors past torch's parallel grain, so the check runs when such a tensor is read;
    # every other parallel operation of the trace (the probe batch through convolutions, large products)
    # yields shapes, except a max-pooling checked against torch, which checks the threads first.
    # the conversion's probe batch needs no autograd (one switch for all its operations); fx's trace of
    # forward runs in the caller's mode
    grad = torch.is_grad_enabled()
    with gradual_underflow(torch_threads=False), contextlib.ExitStack() as stack, torch.no_grad():
        team: list = []

        def workers() -> None:
            if not team:
                team.append(stack.enter_context(gradual_underflow()))

        if any(t.numel() >= _PARALLEL_NUMEL for _, t in named) or _large_masks(masks):
            workers()
        own = set(vars(model))
        try:
            return _trace(model, masks, input_shape, max_entries, named, workers, grad)
        finally:
            # fx stores a tensor a forward creates as an attribute `_tensor_constant<i>` of the model; the
            # caller's model is left as it was, read or refused
            for k in set(vars(model)) - own:
                if k.startswith("_tensor_constant"):
                    del model.__dict__[k]


_LOW_PRECISION = (torch.float16, torch.bfloat16)
_WARNED_LOW: set = set()  # the low-precision dtypes warned about in this process


def _warn_low_precision(named: list) -> None:
    """Warn once per process and dtype that a float16/bfloat16 model is analysed in float64 (see trace)."""
    for pname, t in named:
        if t.dtype in _LOW_PRECISION and t.dtype not in _WARNED_LOW:
            _WARNED_LOW.add(t.dtype)
            warnings.warn(
                f"model has {str(t.dtype).replace('torch.', '')} parameters ('{pname}'): netgeom reads them "
                "exactly into float64 and analyses the network in float64, not the rounding of the model's "
                "own low-precision forward (whose activation patterns can differ near region boundaries); "
                "this warning is shown once per process",
                stacklevel=3,
            )


def _check_root(model: nn.Module, named: list) -> None:
    """Refuse, naming the cause, a model object the trace would misread or fail on obscurely: a wrapper
    (torch.compile's, DataParallel) whose forward is not the network's, a root class with its own
    ``__call__`` (fx traces the root's ``forward`` only), parameters without values (meta device, lazy
    modules not run yet)."""
    cls = type(model)
    inner = model.__dict__.get("_modules", {})
    if "_orig_mod" in inner and cls.__name__ == "OptimizedModule":
        raise UnsupportedLayerError(
            f"model is a torch.compile wrapper ({cls.__name__}), whose forward is compiled code, not the "
            "network's: pass the original module (model._orig_mod); its parameter names have no '_orig_mod.' "
            "prefix (compiling a module in place, module.compile(), keeps the module readable)"
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise UnsupportedLayerError(
            f"model is a {cls.__name__} wrapper, whose forward scatters the batch over devices: pass the "
            "wrapped network (model.module); its parameter names have no 'module.' prefix"
        )
    for c in cls.__mro__:
        if c is nn.Module:
            break
        own = c.__dict__.get("__call__")
        if own is not None and not (
            # an fx GraphModule's own class gets a __call__ that calls nn.Module.__call__ (only to show the
            # generated code in a traceback): its forward is all it computes
            issubclass(c, fx.GraphModule)
            and getattr(own, "__qualname__", "").endswith("GraphModule.recompile.<locals>.call_wrapped")
        ):
            raise UnsupportedLayerError(
                f"{cls.__name__} defines its own __call__ (in {c.__qualname__}): torch.fx reads the root "
                "model's forward only, so what __call__ does around it would be silently missing; move it "
                "into forward, or wrap the model in a module whose forward calls it"
            )
    for pname, t in named:
        if isinstance(t, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)):
            raise ValueError(
                f"model has an uninitialized lazy parameter '{pname}' (a Lazy* module that has not run): "
                "run one forward pass, model(x), first so that it infers its shapes"
            )
        if t.is_meta:
            raise ValueError(
                f"model's '{pname}' is on the meta device (a shape without values): materialize the model "
                "first (model.to_empty(device='cpu') and load_state_dict, or build it off the meta device)"
            )


# torch runs an elementwise operation or reduction on its thread pool from at::internal::GRAIN_SIZE = 32768
# elements on; a weight or mask from an eighth of that on is read with the pool's flush state checked
_PARALLEL_NUMEL = 4096


def _large_masks(masks) -> bool:
    """Whether any mask may have ``_PARALLEL_NUMEL`` entries or more (a form whose size is not at hand
    counts as large)."""
    if masks is None:
        return False
    if isinstance(masks, Mapping):
        masks = list(masks.values())
    if not isinstance(masks, (list, tuple)):
        return True
    for v in masks:
        if torch.is_tensor(v):
            n = v.numel()
        elif isinstance(v, np.ndarray):
            n = v.size
        else:
            return True
        if n >= _PARALLEL_NUMEL:
            return True
    return False


# smooth (or not piecewise-linear) activations and layers, named so in a refusal; anything else unread is
# "not supported"
_SMOOTH = tuple(
    getattr(nn, n)
    for n in ("Sigmoid", "Tanh", "GELU", "SiLU", "Softplus", "ELU", "SELU", "CELU", "Mish", "Softmax",
              "LogSoftmax", "Softmin", "Softsign", "Tanhshrink", "LogSigmoid", "Hardswish", "GLU",
              "MultiheadAttention", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "LSTM",
              "GRU", "RNN")
    if hasattr(nn, n)
)


def _refuse_hooks(model: nn.Module) -> None:
    """Refuse a model whose forward hooks could change what it computes: the graph is read from the modules'
    parameters and forward, so a hook's change (an output doubled, torch.nn.utils.prune's weight rebuilt from
    ``weight_orig * weight_mask`` before each call) would be silently missing. Backward hooks change nothing
    here."""
    from torch.nn.modules import module as _m

    for h in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(_m, h, None):
            raise UnsupportedLayerError(
                f"a global {h[8:-1].replace('_', ' ')} is registered (torch.nn.modules.module."
                f"register_module_{h[8:-1]}): netgeom reads the model's parameters and forward, not what a "
                "hook changes; remove it first"
            )
    try:
        from torch.nn.utils.prune import BasePruningMethod
    except ImportError:  # pragma: no cover
        BasePruningMethod = ()
    for path, m in model.named_modules():
        for kind, hooks in (("forward pre-hook", m._forward_pre_hooks), ("forward hook", m._forward_hooks)):
            for hook in hooks.values():
                where = f"module '{path}' ({type(m).__name__})" if path else f"the model ({type(m).__name__})"
                if isinstance(hook, BasePruningMethod):
                    p = hook._tensor_name
                    full = f"{path}.{p}" if path else p
                    raise UnsupportedLayerError(
                        f"{where} is pruned by torch.nn.utils.prune (its '{p}' is rebuilt from '{p}_orig' "
                        f"and '{p}_mask' by a forward pre-hook, and may be stale): pass the mask as "
                        f"masks={{'{full}': module.{p}_mask}} and call torch.nn.utils.prune.remove(module, "
                        f"'{p}') first"
                    )
                raise UnsupportedLayerError(
                    f"{where} has a {kind} ({getattr(hook, '__qualname__', type(hook).__name__)}): netgeom "
                    "reads the modules' parameters and forward, not what a hook changes; remove the hook "
                    "(handle.remove()) before reading the network"
                )


def _trace(model, masks, input_shape, max_entries, named, workers, grad: bool = True) -> PLGraph:
    name = type(model).__name__
    _refuse_hooks(model)
    masks, functional_masks = _check_trace_masks(masks, model)
    norms = _finite_norms([t for _, t in named])
    for (pname, t), finite in zip(named, norms):
        if t.is_floating_point() and not finite and not torch.isfinite(t.detach()).all():
            if masks is not None and pname in masks:
                kept = _as_mask(masks[pname], pname, t.shape) != 0
                if torch.isfinite(t.detach()[kept]).all():
                    continue  # (only pruned entries are non-finite: they are read as zero)
            raise ValueError(f"model has non-finite values (NaN or inf) in '{pname}'")
        if t.is_complex():
            raise TypeError(f"model has a complex tensor '{pname}'; netgeom reads real networks")

    graph = _sequential_graph(model)
    try:
        if graph is None:
            with torch.set_grad_enabled(grad):
                graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises TraceError, RuntimeError, TypeError ... with the user's frame inside
        raise UnsupportedLayerError(
            f"cannot trace {name}.forward with torch.fx{_user_frame(exc)}: {type(exc).__name__}: {exc}. "
            "netgeom reads networks whose forward is a fixed sequence of supported operations (no "
            "data-dependent control flow)"
        ) from None

    b = _Builder(model, masks, max_entries, workers)
    if not any(
        (n.op == "call_module" and isinstance(b.submodule(n.target), _WEIGHTED)) or n.op == "get_attr"
        for n in graph.nodes
    ):
        raise ValueError(f"model ({name}) has no Linear or Conv layer: nothing to analyse")
    # a parameter read in forward is read only as F.linear's weight or bias; any other use (x @ W,
    # torch.matmul, W.t(), W * mask) is refused here, naming the node, before the input shape is guessed
    for n in graph.nodes:
        if n.op != "get_attr":
            continue
        for u in n.users:
            as_linear = u.op == "call_function" and u.target is F.linear and n not in u.args[:1]
            if not as_linear or u.kwargs.get("input") is n:
                raise b.refuse(
                    u,
                    f"reads the tensor attribute '{n.target}' inside forward (a constant, or a parameter "
                    "outside a supported module); such a tensor is read only as the weight or bias of "
                    "F.linear(x, self.weight, self.bias): write the layer that way or as an nn.Linear",
                )
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is not None:
        shape = tuple(check_int(s, "input_shape entry", minimum=1) for s in input_shape)
    else:
        shape = _infer_input_shape(model, graph)

    def alias_like(n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(b.submodule(n.target), _SKIPPED + _RESHAPES)
        if n.op == "call_function" and n.target in _CAT_FUNCS:
            # (a concatenation of one tensor creates no PL node: its users read the tensor's node)
            seq = n.args[0] if n.args else n.kwargs.get("tensors")
            return isinstance(seq, (list, tuple)) and len(seq) == 1
        return n.op in ("call_function", "call_method") and (
            n.target in _RESHAPE_FUNCS or n.target in _DROPOUT_FUNCS
        )

    b.real_users = _count_real_users(graph, alias_like)
    env: dict[fx.Node, Any] = {}
    output_ref = None
    n_inputs = 0
    position: dict[fx.Node, int] = {}  # where each fx node stands (made by the first in-place op's check)

    def last_read(k: fx.Node) -> int:
        """Position of the last node that reads ``k``'s value (x.shape and x.size() read none)."""
        return max(
            (
                position[u]
                for u in k.users
                if not (
                    (u.op == "call_method" and u.target in _META_METHODS)
                    or (u.target is getattr and len(u.args) > 1 and u.args[1] in _META_ATTRS)
                )
            ),
            default=-1,
        )
    # storage -> storages that may or may not share its memory (a reshape that merges axes views a
    # contiguous tensor and copies one in another memory format, e.g. channels_last)
    maybe_shared: dict[int, set[int]] = {}

    def reshaped(n: fx.Node, x: _Ref, y: torch.Tensor, view: bool | None) -> _Ref:
        """The result of a reshape: ``view`` True for a view of ``x``; None for a reshape that views or
        copies depending on the input's memory layout (a view if it only splits axes); False for
        ``contiguous`` (the tensor itself, or a copy of one that is not contiguous)."""
        shape = b.check_batch(n, y, x, same_numel=True)
        if view is None:
            view = _always_view(x.shape, shape)
        if view:
            return _Ref(x.index, shape, y, x.storage)
        r = _Ref(x.index, shape, y)
        maybe_shared.setdefault(x.storage, set()).add(r.storage)
        maybe_shared.setdefault(r.storage, set()).add(x.storage)
        return r

    def val(a):
        """Concrete argument: probe tensors for refs, python values otherwise."""
        return fx.node.map_aggregate(
            a,
            lambda x: (env[x].value if isinstance(env[x], _Ref) else env[x]) if isinstance(x, fx.Node) else x,
        )

    def refs_in(a) -> list[_Ref]:
        out = []
        fx.node.map_aggregate(
            a, lambda x: out.append(env[x]) if isinstance(x, fx.Node) and isinstance(env[x], _Ref) else None
        )
        return out

    def rebind(n: fx.Node, old: _Ref, new: _Ref) -> None:
        # an in-place operation changes the memory of its tensor: every view of it sees the new value,
        # copies keep theirs. A tensor that may or may not share that memory (see maybe_shared) and is
        # read later has two readings, one of them wrong: refused
        linked, todo = set(), [old.storage]
        while todo:
            for t in maybe_shared.get(todo.pop(), ()):
                if t not in linked and t != old.storage:
                    linked.add(t)
                    todo.append(t)
        if linked and not position:
            position.update((m, i) for i, m in enumerate(graph.nodes))
        for k, v in env.items():
            if isinstance(v, _Ref) and v.storage in linked and last_read(k) > position[n]:
                raise b.refuse(
                    n,
                    f"changes in place a tensor that the {b.source(k)} may view or copy (a flatten, "
                    "reshape or contiguous that merges axes views a contiguous tensor but copies one in "
                    "another memory format, e.g. channels_last), and that result is read afterwards: its "
                    "value depends on the memory layout; use the out-of-place operation there (F.relu(x), "
                    "x = x + y)",
                )
        for k, v in list(env.items()):
            if isinstance(v, _Ref) and v.storage == old.storage:
                env[k] = _Ref(new.index, v.shape, new.value.reshape(b.B, *v.shape), old.storage)
        env[n] = _Ref(new.index, new.shape, new.value, old.storage)

    named: dict[str, list] = {}

    def record(n: fx.Node) -> None:
        """Where each module's / fx node's output lives: (PL node, number of its affine ops applied)."""
        ref = env.get(n)
        if not isinstance(ref, _Ref):
            return
        node = b.nodes[ref.index]
        loc = (node, len(node._ops) if node.op == "affine" else None)
        # a module by its path (ambiguous when called twice) and every call by its unique fx node name
        for key in [n.target, n.name] if n.op == "call_module" else [n.name]:
            named.setdefault(key, [])
            if loc not in named[key]:
                named[key].append(loc)

    for n in graph.nodes:
        try:
            if n.op == "placeholder":
                n_inputs += 1
                if n_inputs > 1:
                    raise UnsupportedLayerError(
                        f"cannot read {name}: its forward takes more than one input ('{n.name}'); netgeom "
                        "reads networks of one input tensor"
                    )
                probe = _probe_batch((b.B, *shape))
                idx = b.add_node(n, op="input", inputs=(), shape=shape, source="input")
                env[n] = _Ref(idx, shape, probe)
                continue
            if n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or not isinstance(env.get(out), _Ref):
                    raise UnsupportedLayerError(
                        f"cannot read {name}: its forward must return one tensor, got {type(out).__name__}"
                    )
                output_ref = env[out]
                continue
            if n.op == "get_attr":
                attr = _get_attr(model, n.target)
                if not torch.is_tensor(attr):
                    raise b.refuse(n, f"reads the attribute '{n.target}' inside forward")
                env[n] = _Param(n.target, attr)
                continue
            args, kwargs = n.args, n.kwargs
            refs = refs_in((args, kwargs))
            t = n.target
            if t is F.linear and n.op == "call_function":
                bound = dict(zip(("input", "weight", "bias"), args))
                bound.update(kwargs)
                x, w, bias = (
                    env.get(bound.get(k)) if isinstance(bound.get(k), fx.Node) else bound.get(k)
                    for k in ("input", "weight", "bias")
                )
                if (
                    isinstance(x, _Ref)
                    and len(refs) == 1
                    and isinstance(w, _Param)
                    and (bias is None or isinstance(bias, _Param))
                ):
                    env[n] = b.func_linear(n, x, w, bias)
                    continue
                raise b.refuse(
                    n,
                    "is read only as F.linear(x, weight, bias) with x a traced tensor and weight, bias "
                    "parameters of the model",
                )
            if n.op == "call_module":
                m = b.submodule(t)
                if m.training and isinstance(m, _MODE_DEPENDENT):
                    b.training_modules.append(t)
                x = env[args[0]] if args and isinstance(args[0], fx.Node) else None
                if not isinstance(x, _Ref) or len(refs) != 1 or kwargs:
                    raise b.refuse(n, "is called with other than one tensor argument")
                base = _overridden_base(m)
                if base is not None:
                    raise UnsupportedLayerError(
                        f"layer '{t}' ({type(m).__module__}.{type(m).__qualname__}) is a subclass of "
                        f"nn.{base.__name__} with a forward of its own (e.g. quantization-aware training's "
                        f"fake-quantized weight), so it does not compute what nn.{base.__name__} computes; "
                        f"netgeom reads nn.{base.__name__}'s own forward only (in {name}): convert it to a "
                        f"plain nn.{base.__name__} first"
                    )
                if isinstance(m, _SKIPPED):
                    env[n] = x
                elif isinstance(m, _RESHAPES):
                    # (Unflatten splits an axis: always a view; Flatten merges axes: a view or a copy)
                    env[n] = reshaped(n, x, m(x.value), True if isinstance(m, nn.Unflatten) else None)
                elif isinstance(m, _ACTIVATIONS):
                    r = b.relu(n, x, m.negative_slope if isinstance(m, nn.LeakyReLU) else 0.0)
                    env[n] = r
                    if getattr(m, "inplace", False):
                        rebind(n, x, r)
                elif isinstance(m, _MAXPOOLS):
                    if m.return_indices:
                        raise b.refuse(n, "returns indices")
                    dim = 1 if isinstance(m, nn.MaxPool1d) else 2
                    env[n] = b.maxpool(n, x, dim, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
                elif isinstance(m, _WEIGHTED + _BN + _POOLS) or getattr(type(m), "netgeom_linear", False):
                    env[n] = b.module_op(n, m, x)
                else:
                    # (ReLU6, Hardtanh, ConvTranspose, padding, upsampling ... are piecewise-linear, only not
                    # read: "not supported" unless the module is a known smooth one)
                    why = "is not piecewise-linear" if isinstance(m, _SMOOTH) else "is not supported"
                    raise UnsupportedLayerError(
                        f"layer '{t}' ({type(m).__name__}) {why} (in {name}); supported: "
                        + ", ".join(SUPPORTED_LAYERS)
                    )
                continue

            # call_function / call_method
            if not refs:
                # shape arithmetic and other python on plain values (x.size(0) * 2, ...)
                try:
                    res = t(*val(args), **val(kwargs)) if n.op == "call_function" else None
                except Exception as exc:
                    raise b.refuse(n, f"failed on the probe input: {exc}") from None
                if n.op == "call_method" or torch.is_tensor(res):
                    raise b.refuse(n, "creates a tensor inside forward (a constant)")
                env[n] = res
                continue
            x = refs[0]
            is_method = n.op == "call_method"
            first_is_x = bool(args) and isinstance(args[0], fx.Node) and env.get(args[0]) is x
            if (is_method and t in _META_METHODS) or (
                t is getattr and len(args) > 1 and args[1] in _META_ATTRS
            ):
                env[n] = (
                    getattr(x.value, t)(*val(args[1:]), **val(kwargs))
                    if is_method
                    else getattr(x.value, args[1])
                )
                continue
            if t in _RELU_FUNCS or t in _LEAKY_FUNCS:
                if len(refs) != 1 or not first_is_x:
                    raise b.refuse(n, "is called with other than one tensor argument")
                slope = 0.0
                if t in _LEAKY_FUNCS:
                    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
                inplace = t in (torch.relu_, F.relu_, "relu_", F.leaky_relu_) or bool(
                    kwargs.get(
                        "inplace",
                        args[2]
                        if t in _LEAKY_FUNCS and len(args) > 2
                        else (args[1] if t is F.relu and len(args) > 1 else False),
                    )
                )
                r = b.relu(n, x, float(slope))
                env[n] = r
                if inplace:
                    rebind(n, x, r)
                continue
            if t in _ADD_FUNCS:
                other = args[1] if len(args) > 1 else kwargs.get("other")
                alpha = kwargs.get("alpha", 1)
                if len(refs) != 2 or not isinstance(other, fx.Node) or alpha != 1:
                    raise b.refuse(n, "adds a constant or scales the summand (only tensor + tensor is read)")
                a_ref, b_ref = env[args[0]], env[other]
                r = b.add(n, a_ref, b_ref)
                env[n] = r
                if t in (operator.iadd, "add_"):
                    rebind(n, a_ref, r)
                continue
            if t in _CAT_FUNCS:
                seq = args[0] if args else kwargs.get("tensors")
                dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
                if not isinstance(seq, (list, tuple)) or not all(
                    isinstance(s, fx.Node) and isinstance(env[s], _Ref) for s in seq
                ):
                    raise b.refuse(n, "concatenates something other than traced tensors")
                env[n] = b.cat(n, [env[s] for s in seq], int(dim))
                continue
            if t in _DROPOUT_FUNCS:
                active = kwargs.get("training", kwargs.get("train", args[2] if len(args) > 2 else True))
                if active and not model.training:
                    # F.dropout's training flag defaults to True: it drops units even after model.eval(),
                    # so model(x) is random and no piecewise-linear reading of it can equal it
                    raise b.refuse(
                        n,
                        "is a dropout that stays active in eval mode (F.dropout's training flag defaults to "
                        "True, so model(x) is random); pass training=self.training",
                    )
                if active:
                    b.training_modules.append(n.name)
                env[n] = x
                continue
            if len(refs) != 1 or not first_is_x:
                raise b.refuse(n, "is not supported with these tensor arguments")
            if t in _RESHAPE_FUNCS:
                try:
                    y = (
                        getattr(x.value, t)(*val(args[1:]), **val(kwargs))
                        if is_method
                        else t(*val(args), **val(kwargs))
                    )
                except RuntimeError as exc:
                    raise b.refuse(n, f"fails on an input of shape {x.shape}: {exc}") from None
                # view/unflatten/squeeze/unsqueeze always view (or fail); flatten/reshape view or copy by
                # the memory layout, contiguous copies a tensor that is not contiguous
                env[n] = reshaped(n, x, y, False if t == "contiguous" else None if t in _MAYBE_COPY else True)
                continue
            if t in _MAXPOOL_FUNCS:
                names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
                defaults = {
                    "stride": None,
                    "padding": 0,
                    "dilation": 1,
                    "ceil_mode": False,
                    "return_indices": False,
                }
                bound = dict(defaults)
                bound.update(zip(names, args[1:]))
                bound.update(kwargs)
                if bound["return_indices"]:
                    raise b.refuse(n, "returns indices")
                env[n] = b.maxpool(
                    n,
                    x,
                    _MAXPOOL_FUNCS[t],
                    bound["kernel_size"],
                    bound["stride"],
                    bound["padding"],
                    bound["dilation"],
                    bound["ceil_mode"],
                )
                continue
            if t in _POOL_FUNCS:
                env[n] = b.func_affine(n, x, t, val(args[1:]), val(kwargs), t.__name__)
                continue
            if t in _MEAN_FUNCS:
                dims = args[1] if len(args) > 1 else kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else dims
                nd = len(x.shape) + 1
                if (
                    dims is None
                    or any((d + nd if d < 0 else d) == 0 for d in dims)
                    or kwargs.get("dtype") is not None
                ):
                    raise b.refuse(n, "averages over the batch axis")
                keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
                env[n] = b.func_affine(n, x, torch.mean, (tuple(dims), bool(keep)), {}, "mean")
                continue
            raise b.refuse(n, "is not piecewise-linear or not supported")
        finally:
            record(n)

    if output_ref is None:
        raise UnsupportedLayerError(f"cannot read {name}: its forward returns nothing")
    unread = sorted(functional_masks - b.functional_weights - b.used_masks)
    if unread:
        raise ValueError(
            f"masks name parameters that are not Linear/Conv weights: '{unread[0]}' is neither the weight of "
            f"a Linear/Conv module nor read by F.linear in {name}.forward"
        )
    if not b.has_weight:
        raise ValueError(f"model ({name}) has no Linear or Conv layer: nothing to analyse")
    if b.training_modules:
        warnings.warn(
            f"model is in training mode; {b.training_modules} are read with eval semantics (BatchNorm "
            "running statistics, no dropout), so the affine maps are those of model.eval()",
            stacklevel=3,
        )
    nodes = b.nodes
    out_idx = len(nodes)
    nodes.append(
        PLNode(
            index=out_idx,
            name="output",
            op="output",
            inputs=(output_ref.index,),
            shape=output_ref.shape,
            source="output",
            _max_entries=max_entries,
        )
    )
    g = PLGraph(_prune(nodes), shape, name)
    kept = {id(x) for x in g.nodes}
    g.named = {k: [(x.index, m) for x, m in v if id(x) in kept] for k, v in named.items()}
    return g


def _probe_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """The probe input: standard normal float64 values from a generator seeded 0 (the same every trace),
    made once per shape and copied (by numpy: three torch calls fewer a trace)."""
    arr = _PROBES.get(shape)
    if arr is None:
        gen = torch.Generator().manual_seed(0)
        arr = torch.randn(shape, generator=gen, dtype=torch.float64).numpy()
        if len(_PROBES) >= 256:
            _PROBES.clear()
        _PROBES[shape] = arr
    return torch.from_numpy(arr.copy())


_PROBES: dict[tuple[int, ...], np.ndarray] = {}


def _prune(nodes: list[PLNode]) -> list[PLNode]:
    """Keep the input and the ancestors of the output, renumbered in topological order."""
    keep = {0, len(nodes) - 1}
    stack = [len(nodes) - 1]
    while stack:
        for i in nodes[stack.pop()].inputs:
            if i not in keep:
                keep.add(i)
                stack.append(i)
    order = sorted(keep)
    new = {old: k for k, old in enumerate(order)}
    out = []
    for old in order:
        n = nodes[old]
        n.index = new[old]
        n.inputs = tuple(new[i] for i in n.inputs)
        out.append(n)
    return out
