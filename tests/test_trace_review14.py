"""The reader's answers where eager torch and a symbolic trace differ: an in-place ``+=`` on a tensor with a
second name, and modules whose hooks change what they compute (review 14)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netgeom import trace
from netgeom.nets import UnsupportedLayerError


class _AliasedIadd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(12, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        skip = h
        h += self.fc2(h)  # in place: skip is h, and sees the sum
        return self.fc3(torch.cat([F.relu(h), skip], 1))


class _PlainIadd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.fc1(x)
        h += self.fc1(x)
        return self.fc2(F.relu(h))


@pytest.mark.parametrize("cls", [_AliasedIadd, _PlainIadd])
def test_inplace_add_is_read_as_eager_torch_computes_it(cls):
    torch.manual_seed(0)
    net = cls().double().eval()
    x = torch.randn(64, 4, dtype=torch.float64)
    with torch.no_grad():
        want = net(x.clone())
    assert torch.equal(trace(net).forward(x), want)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_a_hooked_module_is_refused_naming_it(kind):
    net = _mlp()
    if kind == "forward":
        net[0].register_forward_hook(lambda mod, inp, out: out * 2)
    else:
        net[0].register_forward_pre_hook(lambda mod, inp: (inp[0] * 0,))
    with pytest.raises(UnsupportedLayerError, match=r"module '0' \(Linear\) has a forward (pre-)?hook"):
        trace(net)


def test_torch_prune_is_refused_with_the_way_to_pass_its_mask():
    import torch.nn.utils.prune as prune

    net = _mlp()
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    mask = net[0].weight_mask.clone()
    with pytest.raises(UnsupportedLayerError, match=r"masks=\{'0.weight': module.weight_mask\}"):
        trace(net)
    # following the advice reads the pruned net
    prune.remove(net[0], "weight")
    g = trace(net, {"0.weight": mask})
    x = torch.randn(16, 4, dtype=torch.float64)
    with torch.no_grad():
        want = net.double()(x)
    torch.testing.assert_close(g.forward(x), want, rtol=0, atol=1e-12)


def test_a_removed_hook_reads_again():
    net = _mlp()
    handle = net[0].register_forward_hook(lambda mod, inp, out: None)
    with pytest.raises(UnsupportedLayerError):
        trace(net)
    handle.remove()
    assert [n.op for n in trace(net).nodes] == ["input", "affine", "relu", "affine", "output"]


@pytest.mark.parametrize("how", ["unused", "frozen"])
def test_training_with_a_masked_parameter_without_gradient(how):
    # a masked parameter outside forward (an auxiliary head) or frozen has no .grad: the masking of the
    # others' gradients crashed on it ("expected Tensor ... got NoneType")
    from netgeom.training import TrainConfig, Trainer

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.aux = nn.Linear(6, 8), nn.Linear(8, 2), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    X, Xt = torch.randn(64, 6), torch.randn(16, 6)
    y, yt = (X[:, 0] > 0).long(), (Xt[:, 0] > 0).long()
    net = Net()
    masks = {"a.weight": torch.rand(8, 6) > 0.5, "aux.weight": torch.rand(3, 8) > 0.5}
    if how == "frozen":
        net.a.weight.requires_grad_(False)
    Trainer(net, (X, y, Xt, yt), TrainConfig(epochs=1, batch_size=16), masks=masks, verbose=False,
            threads=1).run()
    for name, m in masks.items():
        assert (dict(net.named_parameters())[name][~m] == 0).all()


@pytest.mark.parametrize(
    "layer, why",
    [
        (nn.ReLU6(), "is not supported"),
        (nn.Hardtanh(), "is not supported"),
        (nn.ConvTranspose1d(6, 6, 1), "is not supported"),
        (nn.Sigmoid(), "is not piecewise-linear"),
        (nn.GELU(), "is not piecewise-linear"),
    ],
)
def test_a_refused_layer_is_named_for_the_right_reason(layer, why):
    # ReLU6, Hardtanh or a transposed convolution are piecewise-linear: refused as unsupported, not as smooth
    if isinstance(layer, nn.ConvTranspose1d):
        net = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (6, 1)), layer, nn.Flatten(), nn.Linear(6, 2))
    else:
        net = nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 2))
    with pytest.raises(UnsupportedLayerError, match=why):
        trace(net, input_shape=(4,))


def test_a_tied_weight_is_masked_in_every_use():
    # b.weight is d.weight: a mask on the parameter zeroes it wherever it is used (as training applies it)
    import copy

    from netgeom.pruning import prunable_parameters

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 4, bias=False), nn.Linear(4, 2)
            self.d = nn.Linear(6, 4)
            self.d.weight = self.b.weight

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.c(F.relu(self.b(h)) + self.d(h))

    torch.manual_seed(0)
    net = Tied()
    assert prunable_parameters(net) == ["a.weight", "b.weight", "c.weight"]
    mask = torch.rand(4, 6) > 0.5
    x = torch.randn(8, 4, dtype=torch.float64)
    zeroed = copy.deepcopy(net).double()
    with torch.no_grad():
        zeroed.b.weight.mul_(mask.double())
        want = zeroed(x)
    assert torch.equal(trace(net, {"b.weight": mask}, input_shape=(4,)).forward(x), want)


def test_prunability_says_when_the_curve_never_fell():
    from netgeom.pruning.prunability import prunability

    sp = [0.0, 0.2, 0.36, 0.488, 0.59]

    def levels(acc):
        return [{"sparsity": s, "test_acc": a} for s, a in zip(sp, acc)]

    never = prunability(levels([0.9, 0.91, 0.9, 0.92, 0.9]))
    drops = prunability(levels([0.9, 0.91, 0.9, 0.9, 0.5]))
    assert never.censored and never.prunability == 0.59
    assert not drops.censored and drops.prunability == 0.488
    assert prunability(levels([0.9])[:1]).censored
    # several seeds: the level's own sparsity, not a mean that rounds 0.2 to 0.20000000000000004
    runs = [levels([0.9, 0.9, 0.5, 0.5, 0.5]) for _ in range(3)]
    assert prunability(runs, eps=0.0).prunability == 0.2
    with pytest.raises(ValueError, match="fraction in"):
        prunability([{"sparsity": 0.0, "test_acc": 90.0}, {"sparsity": 0.2, "test_acc": 89.0}])


@pytest.mark.parametrize("drop, at", [(0.5, 3), (0.5, 7), (0.0, 7)])
def test_a_mid_epoch_checkpoint_resumes_bit_identically(drop, at):
    # dropout's draws and the epoch's train loss continue where the checkpoint stood; a checkpoint after an
    # epoch's last step (7 = one epoch here) keeps that epoch's record
    import copy

    from netgeom.training import TrainConfig, Trainer

    torch.manual_seed(0)
    X, Xt = torch.randn(200, 6), torch.randn(50, 6)
    y, yt = (X[:, 0] > 0).long(), (Xt[:, 0] > 0).long()

    def net():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(drop), nn.Linear(8, 2))

    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, eval_train=False)
    saved = {}

    def keep(event, tr):
        if event == "step" and tr.step == at:
            saved["state"] = copy.deepcopy(tr.state_dict())

    a = net()
    ha = Trainer(a, (X, y, Xt, yt), cfg, verbose=False, threads=1, callback=keep).run()
    b = net()
    tb = Trainer(b, (X, y, Xt, yt), cfg, verbose=False, threads=1)
    hb = tb.load_state_dict(saved["state"]).run()
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert hb.epoch == ha.epoch == [1, 2]
    assert hb.train_loss == ha.train_loss and hb.test_acc == ha.test_acc


def test_a_mask_for_a_parametrized_weight_names_the_cause():
    from torch.nn.utils import parametrize

    from netgeom._validation import check_masks

    class Keep(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    net = _mlp()
    mask = torch.rand(6, 4) > 0.5
    parametrize.register_parametrization(net[0], "weight", Keep(mask.float()))
    with pytest.raises(Exception, match="computed from other tensors .*parametrize"):
        check_masks({"0.weight": mask}, net)
