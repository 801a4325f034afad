"""Bad inputs across the public API and the command line: each is refused with its cause named.

One table, one row per input: ``(id, call, exception type, fragment of the message)``. A row passes when the
call raises exactly that kind of error and its message contains the fragment (a silently wrong answer, an
obscure error from deep inside torch/numpy, or a crash of another type fails it). CLI rows run
``netgeom.cli.main`` in-process and expect exit status 2 with the fragment on one line of stderr.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

import netgeom as ng
from netgeom._validation import (
    UnknownNameError,
    check_array,
    check_device,
    check_fraction,
    check_masks,
    check_memory,
    check_tensor,
)
from netgeom.data.datasets import DataFileError
from netgeom.pruning.runs import CorruptRunFileError, RunDir, load_state_file

RNG = np.random.default_rng(0)
X = RNG.standard_normal((200, 5))
Xc = X + 1j  # complex
NET = ng.mlp(3, [4], 2, seed=0)
W0 = tuple(NET[0].weight.shape)  # (4, 3)
W2 = tuple(NET[2].weight.shape)  # (2, 4)
ONES = {"0.weight": torch.ones(W0, dtype=torch.bool), "2.weight": torch.ones(W2, dtype=torch.bool)}


def _nan_net():
    net = ng.mlp(3, [4], 2, seed=0)
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    return net


def _inf_net():
    net = ng.mlp(3, [4], 2, seed=0)
    with torch.no_grad():
        net[2].bias[0] = float("inf")
    return net


def _digits():
    return ng.load_digits(seed=0)


def _with(mask_name, value):
    return {**ONES, mask_name: value}


def _idx_file(tmp, data: bytes, gz=True, raw_bytes=False):
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    good_labels = struct.pack(">HBBI", 0, 8, 1, 3) + bytes([1, 2, 3])
    (raw / "t10k-labels-idx1-ubyte").write_bytes(good_labels)
    packed = gzip.compress(data) if gz and not raw_bytes else data
    (raw / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))).write_bytes(packed)
    return tmp


def _images(n=3, h=28, w=28):
    return struct.pack(">HBBIII", 0, 8, 3, n, h, w) + bytes(n * h * w)


def _pickle_bomb(depth: int = 48) -> bytes:
    """A pickle of a few hundred bytes: a dict keyed by nested tuples T_k = (T_{k-1}, T_{k-1}) built through
    the memo, 2**depth leaves; hashing the key (or printing it) would never finish."""
    out = [b"\x80\x02]K\x00\x85r\x00\x00\x00\x00a"]  # a list collecting every T_k, so no POP is needed
    for i in range(1, depth):
        get = b"j" + (i - 1).to_bytes(4, "little")
        out.append(get + get + b"\x86r" + i.to_bytes(4, "little") + b"a")
    out.append(b"}j" + (depth - 1).to_bytes(4, "little") + b"K\x01s.")
    return b"".join(out)


def _cifar_bomb(tmp):
    base = tmp / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(_pickle_bomb())
    return tmp


def _zip_with_pickle(tmp, data: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl is replaced by ``data``."""
    import zipfile

    good = tmp / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    out = tmp / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data if info.filename.endswith("data.pkl") else src.read(info))
    return out.read_bytes()


def _run_with(tmp, name: str, data: bytes) -> RunDir:
    run = RunDir(tmp, {"qa": 1})
    (run.path / name).write_bytes(data)
    return run


def _diagram(**edits):
    """A saved diagram with some fields edited, read back."""
    d = ng.zeroth_persistence(np.array([[2.0, -1.0], [0.5, 4.0]])).to_dict()
    return ng.topology.ZerothDiagram.from_dict({**d, **edits})


def _file(path, data: bytes):
    path.write_bytes(data)
    return path


CFG = dict(model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10}, data={"name": "digits"})

# (id, call(tmp_path), exception type, message fragment)
API_CASES = [
    # ---------------------------------------------------------------- masks: values
    (
        "mask 0.5",
        lambda t: check_masks(_with("0.weight", torch.full(W0, 0.5)), NET),
        ValueError,
        "mask '0.weight' must be boolean",
    ),
    ("mask 2", lambda t: check_masks(_with("0.weight", torch.full(W0, 2)), NET), ValueError, "e.g. 2"),
    ("mask -1", lambda t: check_masks(_with("0.weight", -np.ones(W0)), NET), ValueError, "e.g. -1.0"),
    (
        "mask nan",
        lambda t: check_masks(_with("0.weight", np.full(W0, np.nan)), NET),
        ValueError,
        "must be boolean",
    ),
    (
        "mask complex",
        lambda t: check_masks(_with("0.weight", np.ones(W0) + 0j), NET),
        TypeError,
        "mask '0.weight' is complex",
    ),
    (
        "mask strings",
        lambda t: check_masks(_with("0.weight", np.full(W0, "1")), NET),
        TypeError,
        "must hold booleans or 0/1, got dtype <U1",
    ),
    (
        "mask None value",
        lambda t: check_masks(_with("0.weight", None), NET),
        TypeError,
        "mask '0.weight' must be a boolean",
    ),
    (
        "mask nested dict",
        lambda t: check_masks(_with("0.weight", {"a": 1}), NET),
        TypeError,
        "mask '0.weight' must be a boolean",
    ),
    (
        "mask ragged list",
        lambda t: check_masks(_with("0.weight", [[1, 0], [1]]), NET),
        TypeError,
        "mask '0.weight' is not array-like",
    ),
    (
        "Masks 2 int",
        lambda t: ng.Masks({"w": torch.full((2,), 2, dtype=torch.int64)}),
        ValueError,
        "must be boolean",
    ),
    (
        "Masks non-str key",
        lambda t: ng.Masks({0: torch.ones(2, dtype=torch.bool)}),
        TypeError,
        "parameter names (str)",
    ),
    # ---------------------------------------------------------------- masks: names and shapes
    (
        "mask bias key",
        lambda t: check_masks(_with("0.bias", torch.ones(4)), NET),
        ValueError,
        "'0.bias' names a bias (biases are never pruned)",
    ),
    (
        "mask bias key no model",
        lambda t: check_masks({"0.bias": torch.ones(4)}),
        ValueError,
        "names a bias (biases are never pruned)",
    ),
    (
        "mask unknown name",
        lambda t: check_masks(_with("9.weight", torch.ones(2, 2)), NET),
        UnknownNameError,
        "'9.weight' names no parameter",
    ),
    (
        "mask wrong shape",
        lambda t: check_masks(_with("0.weight", torch.ones(3, 4)), NET),
        ValueError,
        "mask '0.weight' has shape (3, 4), but the weight has shape (4, 3)",
    ),
    (
        "mask 1-D",
        lambda t: check_masks(_with("2.weight", torch.ones(8)), NET),
        ValueError,
        "mask '2.weight' has shape (8,)",
    ),
    ("mask empty mapping", lambda t: check_masks({}, NET), ValueError, "is empty"),
    (
        "mask list without model",
        lambda t: check_masks([torch.ones(W0)]),
        TypeError,
        "a per-layer list needs the model",
    ),
    (
        "mask list too short",
        lambda t: check_masks([torch.ones(W0)], NET),
        ValueError,
        "list of 1 mask(s), but the model has 2",
    ),
    (
        "mask list of big tensors",
        lambda t: check_masks([torch.ones(300, 300)] * 3, NET),
        ValueError,
        "list of 3 mask(s)",
    ),
    (
        "mask list wrong shape",
        lambda t: check_masks([torch.ones(W0), torch.ones(3, 3)], NET),
        ValueError,
        "mask '2.weight' has shape (3, 3)",
    ),
    ("mask a string", lambda t: check_masks("0.weight", NET), TypeError, "got '0.weight'"),
    (
        "mask a tensor",
        lambda t: check_masks(torch.ones(W0), NET),
        TypeError,
        "got a torch.float32 tensor of shape (4, 3)",
    ),
    (
        "mask model not module",
        lambda t: check_masks(ONES, "net"),
        TypeError,
        "model must be a torch.nn.Module",
    ),
    (
        "Masks.apply wrong shape",
        lambda t: ng.Masks({"0.weight": torch.ones(3, 3, dtype=torch.bool)}).apply(NET),
        ValueError,
        "mask '0.weight' has shape (3, 3)",
    ),
    (
        "Masks.apply unknown",
        lambda t: ng.Masks({"x.weight": torch.ones(3, dtype=torch.bool)}).apply(NET),
        KeyError,
        "x.weight",
    ),
    (
        "Masks.validate bias",
        lambda t: ng.Masks({"0.bias": torch.ones(4, dtype=torch.bool)}).validate(NET),
        ValueError,
        "names a bias (biases are never pruned)",
    ),
    # ---------------------------------------------------------------- masks through the analyses
    (
        "NP bias mask",
        lambda t: ng.neural_persistence(NET, {"0.bias": torch.ones(4)}),
        ValueError,
        "names a bias (biases are never pruned)",
    ),
    (
        "NP mask 0.5",
        lambda t: ng.neural_persistence(NET, {"0.weight": torch.full(W0, 0.5)}),
        ValueError,
        "must be boolean",
    ),
    (
        "NP mask shape",
        lambda t: ng.neural_persistence(NET, {"0.weight": torch.ones(2, 2)}),
        ValueError,
        "mask '0.weight' has shape (2, 2)",
    ),
    ("NP list mask", lambda t: ng.neural_persistence(NET, [torch.ones(W0)]), ValueError, "list of 1 mask"),
    (
        "affine_layers mask 2",
        lambda t: ng.affine_layers(NET, {"2.weight": torch.full(W2, 2.0)}),
        ValueError,
        "mask '2.weight' must be boolean",
    ),
    (
        "network_graph bias",
        lambda t: ng.network_graph(NET, {"2.bias": torch.ones(2)}),
        ValueError,
        "names a bias (biases are never pruned)",
    ),
    (
        "repr dim dict mask 0.5",
        lambda t: ng.representation_dimension(
            NET, torch.randn(50, 3), masks={"0.weight": torch.full(W0, 0.5)}, k=5
        ),
        ValueError,
        "must be boolean",
    ),
    (
        "repr dim mask shape",
        lambda t: ng.representation_dimension(
            NET, torch.randn(50, 3), masks={"0.weight": torch.ones(2, 2)}, k=5
        ),
        ValueError,
        "mask '0.weight' has shape (2, 2)",
    ),
    (
        "regions mask bias",
        lambda t: ng.regions_on_segment(NET, np.zeros(3), np.ones(3), masks={"0.bias": torch.ones(4)}),
        ValueError,
        "names a bias (biases are never pruned)",
    ),
    # ---------------------------------------------------------------- devices
    ("device banana", lambda t: check_device("banana"), ValueError, "'banana' is not a device name"),
    ("device gpu", lambda t: check_device("gpu"), ValueError, "did you mean 'cuda'"),
    (
        "device cuda absent",
        lambda t: check_device("cuda") if not torch.cuda.is_available() else check_device("cuda:99"),
        ValueError,
        "cuda",
    ),
    ("device cuda:7", lambda t: check_device("cuda:7"), ValueError, "cuda:7"),
    ("device mps absent", lambda t: check_device("mps"), ValueError, "MPS is not available"),
    ("device int", lambda t: check_device(0), TypeError, "must be a string"),
    ("device cpu:1", lambda t: check_device("cpu:1"), ValueError, "no index other than 0"),
    ("ID device gpu", lambda t: ng.intrinsic_dimension(X, device="gpu"), ValueError, "did you mean 'cuda'"),
    ("ID device cuda", lambda t: ng.intrinsic_dimension(X, "twonn", device="cuda:5"), ValueError, "cuda:5"),
    ("knn device banana", lambda t: ng.nearest_neighbors(X, 3, device="banana"), ValueError, "not a device"),
    ("train device banana", lambda t: ng.train(NET, _digits(), device="banana"), ValueError, "not a device"),
    (
        "evaluate device",
        lambda t: ng.evaluate(NET, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), device="tpu"),
        ValueError,
        "'tpu' is not a device name",
    ),
    # ---------------------------------------------------------------- unused arguments
    (
        "twonn with k",
        lambda t: ng.intrinsic_dimension(X, "twonn", k=50),
        ValueError,
        "method='twonn' does not use k",
    ),
    (
        "twonn with variant",
        lambda t: ng.intrinsic_dimension(X, "twonn", variant="levina_bickel"),
        TypeError,
        "does not use ['variant']",
    ),
    (
        "mle with fit",
        lambda t: ng.intrinsic_dimension(X, "mle", fit="linear"),
        TypeError,
        "does not use ['fit']",
    ),
    (
        "lpca with unbiased",
        lambda t: ng.intrinsic_dimension(X, "lpca", unbiased=True),
        TypeError,
        "does not use ['unbiased']",
    ),
    (
        "sweep ks with twonn",
        lambda t: ng.id_scale_sweep(X, ks=(5, 10), methods="twonn"),
        ValueError,
        "['ks'] given",
    ),
    (
        "sweep halvings with mle",
        lambda t: ng.id_scale_sweep(X, methods="mle", halvings=2),
        ValueError,
        "['halvings'] given",
    ),
    (
        "sweep variant with twonn",
        lambda t: ng.id_scale_sweep(X, methods="twonn", variant="mackay_ghahramani"),
        ValueError,
        "['variant'] given",
    ),
    (
        "sweep discard with mle",
        lambda t: ng.id_scale_sweep(X, methods="mle", discard_fraction=0.2),
        ValueError,
        "['discard_fraction'] given",
    ),
    (
        "repr dim k with twonn",
        lambda t: ng.representation_dimension(NET, torch.randn(50, 3), method="twonn", k=5),
        ValueError,
        "only MLE uses k",
    ),
    (
        "knn kdtree on cuda",
        lambda t: (
            ng.nearest_neighbors(X, 3, method="kdtree", device="cuda")
            if torch.cuda.is_available()
            else check_device("cuda")
        ),
        ValueError,
        "cuda",
    ),
    # ---------------------------------------------------------------- complex / non-finite data
    ("ID complex", lambda t: ng.intrinsic_dimension(Xc), TypeError, "X is complex"),
    ("ID complex tensor", lambda t: ng.intrinsic_dimension(torch.tensor(Xc)), TypeError, "complex"),
    ("knn complex", lambda t: ng.nearest_neighbors(Xc, 3), TypeError, "X is complex"),
    ("check_array complex list", lambda t: check_array([[1 + 2j, 0]], "X"), TypeError, "X is complex"),
    (
        "check_tensor complex",
        lambda t: check_tensor(torch.zeros(2, dtype=torch.complex64), "X"),
        TypeError,
        "complex",
    ),
    ("sweep complex", lambda t: ng.id_scale_sweep(Xc), TypeError, "complex"),
    ("lpca complex", lambda t: ng.LocalPCA(k=5).fit(Xc), TypeError, "complex"),
    (
        "evaluate complex X",
        lambda t: ng.evaluate(
            NET, torch.zeros(2, 3, dtype=torch.complex64), torch.zeros(2, dtype=torch.long)
        ),
        TypeError,
        "complex",
    ),
    (
        "repr dim complex X",
        lambda t: ng.representation_dimension(NET, torch.zeros(50, 3, dtype=torch.cfloat)),
        TypeError,
        "complex",
    ),
    (
        "Dataset complex",
        lambda t: ng.Dataset(
            "d",
            torch.zeros(4, 2, dtype=torch.cfloat),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, 2),
            torch.zeros(4, dtype=torch.long),
            2,
            (2,),
        ),
        TypeError,
        "real floating-point",
    ),
    (
        "Dataset float labels",
        lambda t: ng.Dataset(
            "d",
            torch.zeros(4, 2),
            torch.zeros(4),
            torch.zeros(4, 2),
            torch.zeros(4, dtype=torch.long),
            2,
            (2,),
        ),
        TypeError,
        "integer tensor of class labels",
    ),
    (
        "Dataset label 7 of 2",
        lambda t: ng.Dataset(
            "d",
            torch.zeros(4, 2),
            torch.full((4,), 7),
            torch.zeros(4, 2),
            torch.zeros(4, dtype=torch.long),
            2,
            (2,),
        ),
        ValueError,
        "outside [0, n_classes=2)",
    ),
    ("ID nan", lambda t: ng.intrinsic_dimension(np.where(X > 2, np.nan, X)), ValueError, "non-finite"),
    ("ID inf", lambda t: ng.intrinsic_dimension(np.where(X > 2, np.inf, X)), ValueError, "non-finite"),
    ("ID 1-D", lambda t: ng.intrinsic_dimension(X[:, 0]), ValueError, "must be 2-D"),
    ("ID too few rows", lambda t: ng.intrinsic_dimension(X[:5]), ValueError, "needs at least"),
    ("ID strings", lambda t: ng.intrinsic_dimension([["a", "b"]] * 30), TypeError, "array-like of numbers"),
    ("ID unknown method", lambda t: ng.intrinsic_dimension(X, "gride"), ValueError, "method must be one of"),
    ("ID k=1", lambda t: ng.intrinsic_dimension(X, k=1), ValueError, "k must be >= 2"),
    ("ID k float", lambda t: ng.intrinsic_dimension(X, k=2.5), TypeError, "k must be an integer"),
    (
        "MLE device with graph",
        lambda t: ng.MLE(device="banana").fit(neighbors=ng.nearest_neighbors(X, 20)),
        ValueError,
        "'banana' is not a device name",
    ),
    ("TwoNN device", lambda t: ng.TwoNN(device="cuda:9").fit(X), ValueError, "cuda:9"),
    ("sweep device", lambda t: ng.id_scale_sweep(X, device="gpu"), ValueError, "did you mean 'cuda'"),
    # complex numbers where the regions and topology code reads data
    (
        "segment complex",
        lambda t: ng.regions_on_segment(NET, np.zeros(3) + 1j, np.ones(3)),
        TypeError,
        "a is complex",
    ),
    (
        "box complex",
        lambda t: ng.regions_in_box(NET, np.zeros(3) + 1j, np.ones(3)),
        TypeError,
        "lo is complex",
    ),
    ("patterns complex", lambda t: ng.count_patterns(NET, X[:, :3] + 1j), TypeError, "X is complex"),
    (
        "persistence complex",
        lambda t: ng.zeroth_persistence(np.ones((3, 3)) + 1j),
        TypeError,
        "weights is complex",
    ),
    ("layer_graph complex", lambda t: ng.layer_graph(np.ones((3, 3)) + 1j), TypeError, "weights is complex"),
    (
        "sparse_bound complex",
        lambda t: ng.sparse_bound(3, [4], [0.5 + 1j]),
        TypeError,
        "densities[0] must be a number",
    ),
    ("serra complex", lambda t: ng.serra_bound(3, [4 + 0j]), TypeError, "widths[0] must be an integer"),
    ("topology_bound complex", lambda t: ng.topology_bound([3, 4 + 0j]), TypeError, "must be an integer"),
    (
        "allocate complex",
        lambda t: ng.allocate_densities(3, [4, 4], 0.5 + 1j),
        TypeError,
        "total_density must be a number",
    ),
    (
        "msf_retention mask 0.5",
        lambda t: ng.msf_retention(NET, {"0.weight": torch.full(W0, 0.5)}),
        ValueError,
        "must be boolean",
    ),
    (
        "magnitude_prune list mask",
        lambda t: ng.magnitude_prune(NET, 0.5, masks=[torch.ones(W0)]),
        ValueError,
        "list of 1 mask(s)",
    ),
    ("magnitude_prune nan", lambda t: ng.magnitude_prune(_nan_net(), 0.5), ValueError, "non-finite"),
    ("bounds nan model", lambda t: ng.bounds(_nan_net()), ValueError, "non-finite"),
    ("patterns nan X", lambda t: ng.count_patterns(NET, np.full((10, 3), np.nan)), ValueError, "non-finite"),
    # ---------------------------------------------------------------- non-finite weights
    (
        "evaluate nan weights",
        lambda t: ng.evaluate(_nan_net(), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
        ValueError,
        "non-finite values (NaN or inf) in '0.weight'",
    ),
    (
        "evaluate inf bias",
        lambda t: ng.evaluate(_inf_net(), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
        ValueError,
        "in '2.bias'",
    ),
    ("NP nan weights", lambda t: ng.neural_persistence(_nan_net()), ValueError, "non-finite"),
    ("affine_layers nan", lambda t: ng.affine_layers(_nan_net()), ValueError, "non-finite"),
    (
        "regions nan",
        lambda t: ng.regions_on_segment(_nan_net(), np.zeros(3), np.ones(3)),
        ValueError,
        "non-finite",
    ),
    (
        "repr dim nan",
        lambda t: ng.representation_dimension(_nan_net(), torch.randn(50, 3), k=5),
        ValueError,
        "non-finite",
    ),
    (
        "train nan",
        lambda t: ng.train(
            _nan_net(),
            ng.Dataset(
                "d",
                torch.zeros(4, 3),
                torch.zeros(4, dtype=torch.long),
                torch.zeros(4, 3),
                torch.zeros(4, dtype=torch.long),
                2,
                (3,),
            ),
        ),
        ValueError,
        "non-finite",
    ),
    # ---------------------------------------------------------------- run directories
    (
        "RunDir nan",
        lambda t: RunDir(t, {"lr": float("nan")}),
        ValueError,
        "non-finite number (NaN or inf) at 'lr'",
    ),
    (
        "RunDir inf nested",
        lambda t: RunDir(t, {"train": {"wd": [0.0, float("inf")]}}),
        ValueError,
        "at 'train.wd[1]'",
    ),
    ("RunDir numpy nan", lambda t: RunDir(t, {"x": np.float32("nan")}), ValueError, "at 'x'"),
    ("RunDir not mapping", lambda t: RunDir(t, [1, 2]), TypeError, "must be a mapping"),
    ("RunDir object", lambda t: RunDir(t, {"f": object()}), TypeError, "not JSON-able"),
    ("RunDir prefix", lambda t: RunDir(t, {"x": 1}, prefix="a/b"), ValueError, "plain name"),
    (
        "RunDir root is file",
        lambda t: (t / "f").write_text("") or RunDir(t / "f", {"x": 1}),
        NotADirectoryError,
        "exists but is a file",
    ),
    (
        "RunDir foreign dir",
        lambda t: ((t / f"run-{ng.pruning.description_hash({'x': 1})}").mkdir(), RunDir(t, {"x": 1})),
        FileExistsError,
        "not a netgeom run directory",
    ),
    ("IMPConfig q 1.5", lambda t: ng.IMPConfig(**CFG, q=1.5), ValueError, "q"),
    (
        "IMPConfig rewind",
        lambda t: ng.IMPConfig(**CFG, rewind="epoch:x"),
        ValueError,
        "rewind must be one of",
    ),
    (
        "IMPConfig model",
        lambda t: ng.IMPConfig(model={"name": "resnet9000"}, data={"name": "digits"}),
        ValueError,
        "resnet9000",
    ),
    ("IMP not config", lambda t: ng.IMP({"model": "mlp"}), TypeError, "config must be an IMPConfig"),
    # ---------------------------------------------------------------- data files
    (
        "IDX not gzip",
        lambda t: ng.load_mnist(_idx_file(t, b"junk", raw_bytes=True)),
        DataFileError,
        "cannot be read as gzip",
    ),
    (
        "IDX bad magic",
        lambda t: ng.load_mnist(_idx_file(t, b"\x01\x02\x08\x03" + bytes(100))),
        DataFileError,
        "not an unsigned-byte IDX file",
    ),
    ("IDX empty", lambda t: ng.load_mnist(_idx_file(t, b"")), DataFileError, "shorter than the 4-byte magic"),
    (
        "IDX header cut",
        lambda t: ng.load_mnist(_idx_file(t, b"\x00\x00\x08\x03\x00\x00\x00")),
        DataFileError,
        "shorter than its 16-byte header",
    ),
    (
        "IDX truncated data",
        lambda t: ng.load_mnist(_idx_file(t, _images()[:-10])),
        DataFileError,
        "truncated",
    ),
    (
        "IDX huge header",
        lambda t: ng.load_mnist(_idx_file(t, struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 28, 28))),
        DataFileError,
        "header says",
    ),
    (
        "IDX 2-D images",
        lambda t: ng.load_mnist(_idx_file(t, struct.pack(">HBBII", 0, 8, 2, 3, 784) + bytes(3 * 784))),
        DataFileError,
        "has 2 dimension",
    ),
    (
        "IDX 14x14",
        lambda t: ng.load_mnist(_idx_file(t, _images(3, 14, 14), gz=False)),
        DataFileError,
        "dimension 1 is 14",
    ),
    (
        "IDX label count",
        lambda t: ng.load_mnist(_idx_file(t, _images(5))),
        DataFileError,
        "holds 3 labels but",
    ),
    ("mnist missing dir", lambda t: ng.load_mnist(t / "nowhere"), FileNotFoundError, "nowhere"),
    ("cifar missing", lambda t: ng.load_cifar10(t), FileNotFoundError, "CIFAR-10 files missing"),
    (
        "load_dataset unknown",
        lambda t: ng.load_dataset({"name": "imagenet"}),
        ValueError,
        "unknown data set 'imagenet'",
    ),
    (
        "load_dataset bad arg",
        lambda t: ng.load_dataset({"name": "digits", "sead": 1}),
        TypeError,
        "bad arguments for data set 'digits'",
    ),
    (
        "load_dataset flat str",
        lambda t: ng.load_dataset({"name": "digits", "flat": "false"}),
        TypeError,
        "'flat' must be true or false",
    ),
    # ---------------------------------------------------------------- memory
    (
        "memory 1 PB",
        lambda t: check_memory(10**15, "a test array"),
        MemoryError,
        "a test array would need about 1e+06 GB",
    ),
    ("mlp widths", lambda t: ng.mlp(3, [0], 2), ValueError, "widths[0] must be >= 1"),
    (
        "mlp 40 PB",
        lambda t: ng.mlp(3, [10**8, 10**8], 2),
        MemoryError,
        "mlp(3, [100000000, 100000000], 2) would need",
    ),
    (
        "IMPConfig 40 PB",
        lambda t: ng.IMPConfig(
            model={"name": "mlp", "n_in": 4, "widths": [10**8, 10**8], "n_out": 2}, data={"name": "digits"}
        ),
        MemoryError,
        "would need about",
    ),
    (
        "masks file pickle",
        lambda t: (
            (t / "m.npz").write_bytes(__import__("pickle").dumps({"a": 1})) and ng.Masks.load(t / "m.npz")
        ),
        ValueError,
        "m.npz is not a readable masks file (it holds pickled",
    ),
    (
        "masks file one array",
        lambda t: np.save(t / "m.npy", np.ones(3)) or ng.Masks.load(t / "m.npy"),
        ValueError,
        "a single array, not an .npz archive",
    ),
    ("masks file missing", lambda t: ng.Masks.load(t / "none.npz"), FileNotFoundError, "no masks file at"),
    # ---------------------------------------------------------------- review (qa): bombs, text, bools
    ("cifar tuple bomb", lambda t: ng.load_cifar10(_cifar_bomb(t)), DataFileError, "expand to more than"),
    (
        "plain pickle bomb",
        lambda t: ng.data.read_plain_pickle(_file(t / "b.pkl", _pickle_bomb())),
        DataFileError,
        "b.pkl is not a plain-data pickle (refused: its objects refer to each other",
    ),
    (
        "weights.pt tuple bomb",
        lambda t: load_state_file(_file(t / "weights.pt", _pickle_bomb())),
        CorruptRunFileError,
        "weights.pt is corrupt (ValueError: its objects refer to each other",
    ),
    (
        "weights.pt zip bomb",
        lambda t: load_state_file(_file(t / "w.pt", _zip_with_pickle(t, _pickle_bomb()))),
        CorruptRunFileError,
        "expand to more than",
    ),
    (
        "IDX gzip header 1 TB",
        lambda t: ng.load_mnist(_idx_file(t, struct.pack(">HBBIII", 0, 8, 3, 2**31, 28, 28) + bytes(99))),
        DataFileError,
        "header says shape (2147483648, 28, 28)",
    ),
    (
        "IDX wrong type code, huge shape",
        lambda t: ng.load_mnist(_idx_file(t, struct.pack(">HBBIII", 0, 9, 3, 2**31, 28, 28), gz=False)),
        DataFileError,
        "not an unsigned-byte IDX file (magic 00000903",
    ),
    ("persistence str weights", lambda t: ng.zeroth_persistence([["1", "2"]]), TypeError, "numbers"),
    (
        "persistence str array",
        lambda t: ng.zeroth_persistence(np.array([["1.5", "2"]])),
        TypeError,
        "numbers given as strings are not converted",
    ),
    ("persistence bytes", lambda t: ng.zeroth_persistence(b"12"), TypeError, "array-like of numbers"),
    (
        "persistence object strs",
        lambda t: ng.zeroth_persistence(np.array([[1.0, "2"]], dtype=object)),
        TypeError,
        "numbers",
    ),
    ("ID numeric strings", lambda t: ng.intrinsic_dimension(X.astype(str)), TypeError, "of numbers"),
    ("NP p=True", lambda t: ng.neural_persistence(NET, p=True), TypeError, "p must be a number"),
    ("NP p='2'", lambda t: ng.neural_persistence(NET, p="2"), TypeError, "got '2'"),
    ("NP layer-max p=False", lambda t: ng.neural_persistence_layer_max(NET, p=False), TypeError, "got False"),
    (
        "run json nested 1e5 deep",
        lambda t: _run_with(t, "x.json", b"[" * 100000 + b"]" * 100000).load_json("x.json"),
        CorruptRunFileError,
        "x.json is corrupt (not valid JSON: nested too deeply",
    ),
    (
        "run json NaN",
        lambda t: _run_with(t, "x.json", b'{"test_acc": NaN}').load_json("x.json"),
        CorruptRunFileError,
        "NaN is not a number netgeom writes",
    ),
    (
        "run json 1e999",
        lambda t: _run_with(t, "x.json", b'{"density": 1e999}').load_json("x.json"),
        CorruptRunFileError,
        "1e999 overflows to inf",
    ),
    (
        "run description nested",
        lambda t: _run_with(t, "description.json", b"[" * 100000) and RunDir(t, {"qa": 1}),
        CorruptRunFileError,
        "description.json is corrupt",
    ),
    (
        "mask meta tensor",
        lambda t: check_masks(_with("0.weight", torch.ones(W0, device="meta")), NET),
        TypeError,
        "mask '0.weight' is a meta tensor",
    ),
    (
        "mask sparse 0.5",
        lambda t: check_masks(_with("0.weight", torch.full(W0, 0.5).to_sparse()), NET),
        ValueError,
        "e.g. 0.5",
    ),
    (
        "patterns X numeric strings",
        lambda t: ng.count_patterns(NET, np.array([["1", "2", "3"]])),
        TypeError,
        "numbers given as strings are not converted",
    ),
    ("diagram NaN deaths", lambda t: _diagram(deaths=[float("nan")] * 3), ValueError, "non-finite"),
    ("diagram death 2", lambda t: _diagram(deaths=[2.0, 0.5, 0.25]), ValueError, "deaths must lie in (0, 1]"),
    ("diagram str deaths", lambda t: _diagram(deaths=["1", "0.5", "0.25"]), TypeError, "of numbers"),
    ("diagram n_essential -3", lambda t: _diagram(n_essential=-3), ValueError, "must be a non-neg"),
    ("diagram total edited", lambda t: _diagram(total_persistence=99.0), ValueError, "is not the sum"),
    ("diagram n_pairs edited", lambda t: _diagram(n_pairs=7), ValueError, "n_pairs = 7 but"),
    (
        "diagram json nested",
        lambda t: ng.topology.ZerothDiagram.from_json('{"births": ' + "[" * 10**5 + "]" * 10**5 + "}"),
        ValueError,
        "nested too deeply",
    ),
    ("fraction True", lambda t: check_fraction(True, "density"), TypeError, "density must be a number"),
    ("fraction str", lambda t: check_fraction("0.5", "density"), TypeError, "got '0.5'"),
    ("fraction np.bool_", lambda t: check_fraction(np.True_, "density"), TypeError, "must be a number"),
]

CLI_CASES = [
    (
        "cli widths abc",
        ["imp", "--widths", "abc"],
        "argument --widths: --widths takes comma-separated integers",
    ),
    ("cli widths empty item", ["imp", "--widths", "100,,100"], "--widths takes comma-separated integers"),
    ("cli widths zero", ["imp", "--widths", "0,5"], "--widths entries must be >= 1"),
    ("cli imp threads beyond the cores", ["imp", "--threads", "100000"], "--threads 100000 is more than 4x"),
    ("cli imp seed past 2**63", ["imp", "--seed", "99999999999999999999999"], "argument --seed"),
    ("cli imp negative seed", ["imp", "--seed", "-1"], "a seed lies in [0, 2**63)"),
    (
        "cli widths huge",
        ["imp", "--widths", "100000,100000", "--quiet", "--data", "digits"],
        "would need about",
    ),
    (
        "cli device banana",
        ["imp", "--device", "banana"],
        "argument --device: --device 'banana' is not a device",
    ),
    ("cli device gpu", ["imp", "--device", "gpu"], "did you mean 'cuda'"),
    ("cli device cuda:3", ["imp", "--device", "cuda:3"], "cuda:3"),
    ("cli imp rounds str", ["imp", "--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
    ("cli imp optimizer", ["imp", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (
        "cli imp rewind",
        ["imp", "--rewind", "epoch:x", "--quiet", "--data", "digits"],
        "rewind must be one of",
    ),
    ("cli imp q", ["imp", "--q", "1.5", "--quiet", "--data", "digits"], "q must lie in"),
    ("cli imp bad model json", ["imp", "--model", "{oops", "--quiet", "--data", "digits"], "not valid JSON"),
    (
        "cli imp out is a file",
        ["imp", "--out", "{file}", "--rounds", "0", "--data", "digits"],
        "exists but is a file",
    ),
    (
        "cli imp out unwritable",
        ["imp", "--out", "/sys/netgeom-x", "--rounds", "0", "--data", "digits"],
        "cannot create the run directory /sys/netgeom-x",
    ),
    ("cli imp unknown option", ["imp", "--widht", "5"], "unrecognized arguments: --widht"),
    (
        "cli densities no value",
        ["bounds", "40", "100", "--densities"],
        "argument --densities: expected at least one argument",
    ),
    ("cli densities 0", ["bounds", "40", "100", "--densities", "0"], "a density lies in (0, 1], got 0"),
    ("cli densities nan", ["bounds", "40", "100", "--densities", "nan"], "a density lies in (0, 1]"),
    (
        "cli densities count",
        ["bounds", "40", "100", "100", "--densities", "0.1", "0.2", "0.3"],
        "one value or one per hidden layer",
    ),
    ("cli bounds abc", ["bounds", "abc"], "argument widths: 'abc' is not an integer"),
    ("cli bounds 0", ["bounds", "40", "0"], "argument widths: must be a positive integer"),
    ("cli bounds n0 only", ["bounds", "40"], "at least one hidden width"),
    ("cli regions huge", ["regions", "10", "100000", "100000"], "would need about"),
    ("cli regions 1-D", ["regions", "1", "5"], "input dimension of at least 2"),
    ("cli id unknown data", ["id", "imagenet"], "argument data: invalid choice: 'imagenet'"),
    ("cli id method", ["id", "digits", "--method", "gride"], "argument --method: invalid choice: 'gride'"),
    (
        "cli id twonn k",
        ["id", "digits", "--method", "twonn", "--k", "50"],
        "--k is not used by --method twonn",
    ),
    ("cli id k 0", ["id", "digits", "--k", "0"], "argument --k: must be a positive integer"),
    ("cli id mnist no root", ["id", "mnist"], "pass --root DIR"),
    ("cli id root unused", ["id", "digits", "--root", "/tmp"], "--root is only for"),
    ("cli id mnist bad root", ["id", "mnist", "--root", "{tmp}/nowhere"], "no MNIST-format IDX files"),
    ("cli id bad idx", ["id", "mnist", "--root", "{idx}"], "cannot be read as gzip"),
    ("cli id cifar payload", ["id", "cifar10", "--root", "{cifar}"], "is not a plain-data pickle"),
    ("cli persistence one", ["persistence", "784"], "at least two layer widths"),
    ("cli unknown command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("cli no command", [], "the following arguments are required: cmd"),
    ("cli demo seed", ["demo", "--seed", "x"], "argument --seed: invalid int value"),
    ("cli regions seed -1", ["regions", "4", "8", "--seed", "-1"], "--seed: a seed lies in [0, 2**63)"),
    ("cli regions seed 2**80", ["regions", "4", "8", "--seed", str(2**80)], "--seed: a seed lies in"),
    ("cli demo seed -5", ["demo", "--seed", "-5"], "argument --seed: a seed lies in"),
    ("cli id needs arguments", ["id", "synthetic_linear"], "invalid choice: 'synthetic_linear'"),
]


def test_the_table_is_large():
    assert len(API_CASES) + len(CLI_CASES) >= 100
    ids = [c[0] for c in API_CASES + CLI_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("call, exc, fragment", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses(tmp_path, call, exc, fragment):
    with pytest.raises(exc) as err:
        call(tmp_path)
    text = str(err.value.args[0]) if isinstance(err.value, KeyError) and err.value.args else str(err.value)
    assert fragment in text, text
    assert "weights_only" not in text and "allow_pickle" not in text
    assert len(text) < 2000  # no dumped tensors


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _fill(arg: str, tmp_path) -> str:
    if "{file}" in arg:
        (tmp_path / "afile").write_text("")
        return str(tmp_path / "afile")
    if "{idx}" in arg:
        raw = tmp_path / "idx" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
        (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
        return str(tmp_path / "idx")
    if "{cifar}" in arg:
        import pickle

        base = tmp_path / "cifar" / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (base / name).write_bytes(pickle.dumps({"data": _Payload(tmp_path / "pwned"), "labels": []}))
        return str(tmp_path / "cifar")
    return arg.replace("{tmp}", str(tmp_path))


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_in_one_line(tmp_path, capsys, argv, fragment):
    from netgeom.cli import main

    argv = [_fill(a, tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0] and "Traceback" not in err
    assert lines[0].startswith("netgeom")
    assert not (tmp_path / "pwned").exists()


def test_cli_debug_shows_the_traceback_instead():
    from netgeom.cli import main

    with pytest.raises(ValueError, match="is not a device name"):
        main(["imp", "--device", "banana", "--debug"])


def test_bfloat16_and_half_weights_are_read_exactly():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.25, 4.0, -1.5]])
    ref = ng.zeroth_persistence(w)
    for dt in (torch.bfloat16, torch.float16):
        d = ng.zeroth_persistence(w.to(dt))  # these values are exact in both formats
        assert d.equals(ref, atol=0.0)
    assert check_array(w.to(torch.bfloat16), "X").dtype == np.float64


def test_idx_gzip_bomb_is_not_inflated(tmp_path):
    """A valid header and label file, then ~200 MB of zeros compressed to ~1 MB: refused as trailing data
    after reading only what the header declares (plus one byte)."""
    import tracemalloc

    raw = _idx_file(tmp_path, _images()) / "MNIST" / "raw"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(_images())
        chunk = bytes(1 << 24)
        for _ in range(12):
            f.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match="trailing bytes"):
            ng.load_mnist(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak


def test_topology_reads_per_layer_mask_lists_like_mappings():
    """A per-layer list of masks is one of the accepted forms: it must give what the mapping gives (it used
    to crash in spanning_forest_protect with torch's size message, and msf_retention refused it)."""
    gen = torch.Generator().manual_seed(0)
    as_list = [torch.rand(W0, generator=gen) > 0.3, torch.rand(W2, generator=gen) > 0.3]
    as_dict = {"0.weight": as_list[0], "2.weight": as_list[1]}
    for protect in (ng.spanning_forest_protect, ng.network_forest_protect):
        a, b = protect(NET, as_list), protect(NET, as_dict)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert ng.msf_retention(NET, as_list).to_dict() == ng.msf_retention(NET, as_dict).to_dict()
    with pytest.raises(TypeError, match="got 0.5"):
        ng.spanning_forest_protect(NET, 0.5)


def test_masks_file_of_wrong_shape_is_refused_from_its_header(tmp_path):
    """masks.npz in a run directory holding ~200 MB of compressed zeros under a known name: refused from the
    .npy header (wrong shape for the model) before numpy allocates and inflates it."""
    import tracemalloc
    import zipfile

    run = RunDir(tmp_path, {"qa": 1})
    path = run.path / "level_0" / "masks.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = __import__("io").BytesIO()
    header = {"descr": "|b1", "fortran_order": False, "shape": (4, 5 * 10**7)}
    np.lib.format.write_array_header_1_0(head, header)
    archive = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
    with archive as z, z.open("0.weight.npy", "w") as f:
        f.write(head.getvalue())
        chunk = bytes(10**7)
        for _ in range(20):
            f.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRunFileError, match=r"mask '0.weight' has shape \(4, 50000000\)"):
            run.load_masks("level_0/masks.npz", NET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak
    with pytest.raises(ValueError, match="more than masks of this model hold"):
        ng.Masks.load(path, {"2.weight": W2})


def test_masks_in_sparse_and_unsigned_forms_are_read():
    dense = torch.tensor([[1, 0, 1]] * 4, dtype=torch.bool)
    ref = check_masks({"0.weight": dense}, NET)["0.weight"]
    for form in (dense.float().to_sparse(), dense.numpy().astype(np.uint64), dense.numpy().astype(np.uint16)):
        assert torch.equal(check_masks({"0.weight": form}, NET)["0.weight"], ref)
