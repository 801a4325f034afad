import math

import numpy as np
import pytest
import torch

from netgeom.data.datasets import load_digits
from netgeom.nets import mlp
from netgeom.pruning import Masks, random_prune
from netgeom.training import TrainConfig, Trainer, TrainHistory, evaluate, lr_at, train


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def net(seed=0):
    return mlp(64, [16], 10, seed=seed)


CFG = TrainConfig(epochs=3, batch_size=64, lr=0.05, schedule="cosine")


def test_config_json_round_trip_and_validation():
    cfg = TrainConfig(epochs=4, schedule="step", milestones=[2, 3], optimizer="adam", lr=1e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in [dict(lr=0), dict(lr=float("nan")), dict(optimizer="rmsprop"), dict(schedule="step"),
                dict(epochs=0), dict(momentum=1.0), dict(warmup_epochs=10, epochs=2)]:
        with pytest.raises((ValueError, TypeError)):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"epoch": 3})


def test_lr_schedules_closed_forms():
    c = TrainConfig(epochs=4, lr=1.0, schedule="cosine")
    spe = 10
    assert lr_at(c, 0, spe) == pytest.approx(1.0)
    assert lr_at(c, 20, spe) == pytest.approx(0.5)
    assert lr_at(c, 30, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    s = TrainConfig(epochs=4, lr=1.0, schedule="step", milestones=(1, 3), gamma=0.5)
    assert [lr_at(s, e * spe, spe) for e in range(4)] == [1.0, 0.5, 0.5, 0.25]
    w = TrainConfig(epochs=4, lr=1.0, warmup_epochs=1, schedule="linear")
    assert [lr_at(w, i, spe) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(w, 10, spe) == pytest.approx(1.0)  # linear decay starts after warm-up
    assert lr_at(w, 25, spe) == pytest.approx(1 - 15 / 30)


def test_training_learns_and_is_deterministic(digits):
    a, b = net(), net()
    ha = train(a, digits, CFG, verbose=False)
    hb = train(b, digits, CFG, verbose=False)
    assert isinstance(ha, TrainHistory) and ha.epoch == [1, 2, 3]
    assert ha.test_acc[-1] > 0.85  # 10 classes: chance is 0.1
    assert ha.test_acc == hb.test_acc and ha.train_loss == hb.train_loss
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    hc = train(net(), digits, CFG.replace(seed=1), verbose=False)
    assert hc.train_loss != ha.train_loss  # the data order follows the seed
    assert ha.to_json()


def test_adam_and_running_train_metrics(digits):
    h = train(net(), digits, CFG.replace(optimizer="adam", lr=1e-2, eval_train=False), verbose=False)
    assert h.train_acc[-1] > 0.8 and all(0 <= a <= 1 for a in h.train_acc)


def test_evaluate_matches_manual(digits):
    m = net()
    loss, acc = evaluate(m, digits.X_test, digits.y_test, batch_size=100)
    with torch.no_grad():
        out = m(digits.X_test)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(out, digits.y_test)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == digits.y_test).float().mean()))
    with pytest.raises(ValueError, match="rows"):
        evaluate(m, digits.X_test, digits.y_test[:3])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_zero_every_step_and_biases_move(digits, optimizer):
    m = net()
    masks = random_prune(m, 0.7, seed=3)
    bias0 = m[0].bias.detach().clone()
    params = dict(m.named_parameters())
    seen = []

    def check(event, tr):
        if event == "step":
            for k, mk in masks.items():
                assert not params[k][~mk].any()
                assert not params[k].grad[~mk].any()
            seen.append(tr.step)

    cfg = CFG.replace(optimizer=optimizer, weight_decay=1e-3, lr=0.05 if optimizer == "sgd" else 3e-3)
    tr = Trainer(m, digits, cfg, masks=masks, verbose=False, callback=check)
    tr.run()
    assert seen == list(range(1, tr.total_steps + 1))
    # momentum / Adam moments never hold anything for a pruned weight
    for p, mk in zip(tr._mp, tr._mm):
        st = tr.optimizer.state[p]
        buf = st.get("momentum_buffer", st.get("exp_avg"))
        assert not buf[mk == 0].any()
    assert not torch.equal(m[0].bias, bias0)
    # the kept weights did train
    assert (m[0].weight[masks["0.weight"]] != 0).all()


def test_resume_mid_training_is_exact(digits):
    ref = net()
    Trainer(ref, digits, CFG, verbose=False).run()

    saved = {}

    class Stop(Exception):
        pass

    def cb(event, tr):
        if event == "epoch":
            saved["state"] = tr.state_dict()
        if event == "step" and tr.step == tr.steps_per_epoch + 5:  # in the middle of epoch 2
            raise Stop

    m = net()
    with pytest.raises(Stop):
        Trainer(m, digits, CFG, verbose=False, callback=cb).run()
    m2 = net()
    tr = Trainer(m2, digits, CFG, verbose=False).load_state_dict(saved["state"])
    assert tr.epoch == 1
    h = tr.run()
    assert h.epoch == [1, 2, 3]
    for a, b in zip(ref.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="different TrainConfig"):
        Trainer(net(), digits, CFG.replace(lr=0.01), verbose=False).load_state_dict(saved["state"])


def test_start_step_continues_the_same_trajectory(digits):
    """Training from the weights at step k with start_step=k (fresh optimiser, no momentum) follows the same
    data order and schedule as the uninterrupted run would."""
    cfg = CFG.replace(momentum=0.0)
    k = 7
    snap = {}

    def cb(event, tr):
        if event == "step" and tr.step == k:
            snap["w"] = {n: v.clone() for n, v in tr.model.state_dict().items()}

    ref = net()
    Trainer(ref, digits, cfg, verbose=False, callback=cb).run()
    m = net()
    m.load_state_dict(snap["w"])
    Trainer(m, digits, cfg, verbose=False, start_step=k).run()
    for a, b in zip(ref.parameters(), m.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_bad_inputs(digits):
    with pytest.raises(TypeError, match="Dataset"):
        train(net(), (digits.X_train, digits.y_train), CFG, verbose=False)
    with pytest.raises(TypeError, match="TrainConfig"):
        train(net(), digits, {"epochs": 1}, verbose=False)
    bad = net()
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        train(bad, digits, CFG, verbose=False)
    m = net()
    with pytest.raises(ValueError, match="shape"):
        train(m, digits, CFG, masks=Masks({"0.weight": np.ones((3, 3), bool)}), verbose=False)
    with pytest.raises(KeyError, match="no parameter"):
        train(m, digits, CFG, masks=Masks({"9.weight": np.ones((3, 3), bool)}), verbose=False)
    # a plain dict of non-0/1 values must not silently rescale the weights
    with pytest.raises(ValueError, match="boolean"):
        train(m, digits, CFG, masks={"0.weight": torch.full(tuple(m[0].weight.shape), 0.5)}, verbose=False)
    with pytest.raises(TypeError, match="mapping"):
        train(m, digits, CFG, masks=[np.ones((3, 3), bool)], verbose=False)
    with pytest.warns(UserWarning, match="removes every weight"):
        Trainer(m, digits, CFG, masks={"0.weight": torch.zeros(tuple(m[0].weight.shape), dtype=torch.bool)},
                verbose=False)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(net(), digits, CFG.replace(lr=1e6, momentum=0.0), verbose=False)


def test_history_plot(digits):
    import matplotlib.pyplot as plt

    h = train(net(), digits, CFG.replace(epochs=1), verbose=False)
    ax = h.plot()
    assert ax.get_xlabel() == "epoch"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["train acc", "test acc", "test loss"]
    plt.close("all")


def _few(digits, n=128):
    # two threads on shared cores are slow for tiny steps (the point of the rule): keep these runs small
    return digits.X_train[:n], digits.y_train[:n], digits.X_test[:n], digits.y_test[:n]


def test_threads_apply_during_run_and_are_restored(digits):
    before = torch.get_num_threads()
    for kw, want in [({"threads": 2}, 2), ({"num_threads": 2}, 2), ({}, 1), ({"threads": "auto"}, 1),
                     ({"threads": None}, before)]:
        seen = set()
        train(net(), _few(digits), CFG.replace(epochs=1), verbose=False,
              callback=lambda ev, tr, seen=seen: seen.add(torch.get_num_threads()), **kw)
        assert seen == {want} and torch.get_num_threads() == before, kw
    with pytest.raises(ValueError, match="num_threads"):
        train(net(), digits, CFG, verbose=False, num_threads=0)
    with pytest.raises(ValueError, match="threads"):
        train(net(), digits, CFG, verbose=False, threads="many")
    with pytest.raises(TypeError, match="not both"):
        train(net(), digits, CFG, verbose=False, threads=2, num_threads=2)


def test_thread_rule_scales_with_the_work_per_step():
    from netgeom.nets import lenet5
    from netgeom.training import WORK_PER_THREAD, choose_threads, forward_work

    # multiply-adds by hand: LeNet-5 on 28x28 (convs 24x24x6 x 25, 8x8x16 x 150; linears 256x120 + ...)
    assert forward_work(lenet5(), torch.zeros(1, 1, 28, 28)) == (
        24 * 24 * 6 * 25 + 8 * 8 * 16 * 150 + 256 * 120 + 120 * 84 + 84 * 10)
    assert forward_work(net(), torch.zeros(1, 64)) == 64 * 16 + 16 * 10
    works = [0, 10**6, WORK_PER_THREAD - 1, WORK_PER_THREAD, 3 * WORK_PER_THREAD, 100 * WORK_PER_THREAD]
    picks = [choose_threads(w, cores=4) for w in works]
    assert picks == [1, 1, 1, 1, 3, 4]  # at least one, one per WORK_PER_THREAD, at most the cores
    import netgeom.training as tr

    # by default capped by the cores this process may use and torch's own default (OMP_NUM_THREADS)
    assert choose_threads(10**12) == min(tr.available_cores(), tr._TORCH_DEFAULT_THREADS)


def test_results_do_not_depend_on_the_thread_count(digits):
    """torch does not promise the same bits across thread counts (a parallel reduction may split
    differently), so across counts: equal to float32 rounding; the same count twice: bitwise."""
    cfg = CFG.replace(epochs=2)
    runs = {}
    for th in (1, 2, 2):
        m = net()
        h = train(m, _few(digits, 320), cfg, verbose=False, threads=th)
        runs.setdefault(th, []).append((h, [p.detach().clone() for p in m.parameters()]))
    (h1, w1), = runs[1]
    (h2, w2), (h2b, w2b) = runs[2]
    assert all(torch.equal(a, b) for a, b in zip(w2, w2b)) and h2.test_loss == h2b.test_loss
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert h1.test_acc == pytest.approx(h2.test_acc, abs=2 / 320)


def test_torch_threads_scopes_and_refuses_conflicting_concurrent_counts():
    import threading

    from netgeom.training import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        with torch_threads(1):  # nested, same count: fine
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
        errors = []

        def other():
            try:
                with torch_threads(2):
                    pass
            except RuntimeError as exc:
                errors.append(str(exc))

        th = threading.Thread(target=other)
        th.start()
        th.join()
        assert errors and "per process" in errors[0]
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


# ------------------------------------------------------------- the input-shape rule (model.input_shape)
def test_lenet_300_100_trains_on_mnist_images(mnist_dir):
    from netgeom.data.datasets import load_mnist
    from netgeom.nets import lenet_300_100

    data = load_mnist(mnist_dir, n_train=300)
    assert data.input_shape == (1, 28, 28)
    model = lenet_300_100(seed=0)
    h = train(model, data, TrainConfig(epochs=2, lr=0.02, batch_size=32), verbose=False)
    # the rule is a view: evaluating the images equals evaluating the flattened rows
    assert evaluate(model, data.X_test, data.y_test) == evaluate(model, data.X_test.reshape(-1, 784),
                                                                 data.y_test)
    assert h.test_acc[-1] == evaluate(model, data.X_test, data.y_test)[1]
    assert h.test_acc[-1] > 0.5  # it learned from 300 images, so the pixels reached the net in order


def test_small_convnet_trains_on_mnist1d_vectors():
    from netgeom.data.datasets import load_mnist1d
    from netgeom.nets import small_convnet

    data = load_mnist1d(seed=0, num_samples=200)
    assert data.input_shape == (40,)
    model = small_convnet(seed=0)
    a = train(model, data, TrainConfig(epochs=1, batch_size=32), verbose=False)
    m2 = small_convnet(seed=0)
    b = train(m2, data.reshape((1, 40)), TrainConfig(epochs=1, batch_size=32), verbose=False)
    assert a.test_loss == b.test_loss and a.train_acc == b.train_acc


def test_feature_count_mismatch_names_both_shapes(digits):
    from netgeom.nets import lenet_300_100

    with pytest.raises(ValueError, match=r"\(784,\).*\(64,\).*Dataset\.flat\(\).*Dataset\.reshape"):
        train(lenet_300_100(), digits, CFG, verbose=False)
    with pytest.raises(ValueError, match=r"\(784,\)"):
        evaluate(lenet_300_100(), digits.X_test, digits.y_test)


def test_evaluate_on_a_dataset_uses_the_test_split_or_train(digits):
    m = net()
    train(m, digits, CFG.replace(epochs=1), verbose=False)
    assert evaluate(m, digits) == evaluate(m, digits.X_test, digits.y_test)
    assert evaluate(m, digits, split="test") == evaluate(m, digits.X_test, digits.y_test)
    tr = evaluate(m, digits, split="train")
    assert tr == evaluate(m, digits.X_train, digits.y_train) and tr != evaluate(m, digits)
    with pytest.raises(ValueError, match="split"):
        evaluate(m, digits, split="val")
    with pytest.raises(TypeError, match="not a Dataset and y"):
        evaluate(m, digits, digits.y_test)
    with pytest.raises(TypeError, match="no y"):
        evaluate(m, digits.X_test)
    with pytest.raises(TypeError, match="split"):
        evaluate(m, digits.X_test, digits.y_test, split="train")


# ------------------------------------------------------------- data forms: tensors, torch Datasets, loaders
def test_streamed_and_in_memory_torch_data_train_identically(digits):
    from torch.utils.data import DataLoader, TensorDataset

    from netgeom.training import TrainingData

    cfg = CFG.replace(epochs=2)
    ref_net = net()
    ref = train(ref_net, digits, cfg, verbose=False)
    tr, te = TensorDataset(digits.X_train, digits.y_train), TensorDataset(digits.X_test, digits.y_test)
    for data, in_memory in [((tr, te), False), ((DataLoader(tr, batch_size=64), te), False),
                            ({"train": tr, "test": te}, None)]:
        m = net()
        h = train(m, data, cfg, verbose=False, in_memory=in_memory)
        assert (h.train_loss, h.test_loss, h.test_acc) == (ref.train_loss, ref.test_loss, ref.test_acc)
        for a, b in zip(ref_net.parameters(), m.parameters()):
            assert torch.equal(a, b)
    fp = TrainingData.from_any(digits).fingerprint()
    assert TrainingData.from_any((tr, te), in_memory=False).fingerprint() == fp
    assert TrainingData.from_any((tr, te), in_memory=True).fingerprint() == fp
    other = TensorDataset(digits.X_train.flip(0), digits.y_train.flip(0))  # same samples, other order
    assert TrainingData.from_any((other, te)).fingerprint() != fp


def test_bad_torch_data_is_refused(digits):
    from torch.utils.data import DataLoader, IterableDataset, SubsetRandomSampler, TensorDataset

    tr, te = TensorDataset(digits.X_train, digits.y_train), TensorDataset(digits.X_test, digits.y_test)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(tr)

    cases = [
        ((DataLoader(tr, batch_size=32), te), ValueError, "batch_size 32 but TrainConfig.batch_size is 64"),
        ((DataLoader(tr, batch_size=64, drop_last=True), te), ValueError, "drop_last"),
        ((DataLoader(tr, batch_size=64, sampler=SubsetRandomSampler(range(10))), te), ValueError, "sampler"),
        ((Stream(), te), TypeError, "IterableDataset"),
        ((TensorDataset(digits.X_train, digits.y_train.float()), te), TypeError, "integer class indices"),
        ((TensorDataset(digits.X_train), te), TypeError, r"\(input, label\) pair"),
        ((digits.X_train, digits.y_train), TypeError, "test split|tensors"),
        ((digits.X_train, digits.y_train, digits.X_test, digits.y_test.float()), TypeError, "integer"),
        ((digits.X_train, digits.y_train[:5], digits.X_test, digits.y_test), ValueError, "rows"),
    ]
    for data, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            Trainer(net(), data, CFG, verbose=False, in_memory=False)
    with pytest.raises(TypeError, match="in_memory"):
        Trainer(net(), digits, CFG, verbose=False, in_memory="yes")


def test_torch_data_are_read_into_memory_only_when_they_fit(digits, monkeypatch):
    from torch.utils.data import TensorDataset

    import netgeom.training as tr

    data = (TensorDataset(digits.X_train, digits.y_train), TensorDataset(digits.X_test, digits.y_test))
    need = tr.TrainingData.from_any(data, in_memory=False).train.nbytes
    assert need == digits.X_train.numel() * 4 + digits.y_train.numel() * 8
    monkeypatch.setattr(tr, "available_memory", lambda: 4 * need)  # a quarter of it is the budget
    placed = tr.TrainingData.from_any(data)
    assert placed.train.in_memory and not placed.test.in_memory  # the budget is spent on the train split
    monkeypatch.setattr(tr, "available_memory", lambda: need)
    assert not tr.TrainingData.from_any(data).train.in_memory
    assert tr.TrainingData.from_any(data, in_memory=True).test.in_memory


def test_streamed_training_starts_mid_epoch_like_tensors(digits):
    """Weight rewinding to iteration k starts a Trainer at step k: the streamed batches resume at batch k."""
    from torch.utils.data import TensorDataset

    cfg = CFG.replace(epochs=2)
    streamed = (TensorDataset(digits.X_train, digits.y_train), TensorDataset(digits.X_test, digits.y_test))
    nets = []
    for data, in_memory in [(digits, None), (streamed, False)]:
        m = net()
        Trainer(m, data, cfg, verbose=False, start_step=7, in_memory=in_memory).run()
        nets.append(m)
    for a, b in zip(*(m.parameters() for m in nets)):
        assert torch.equal(a, b)
