import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from netgeom.data.datasets import load_digits
from netgeom.pruning import IMP, IMPConfig, Masks, magnitude_prune
from netgeom.pruning.imp import demo_imp, demo_section, imp_main, parse_rewind
from netgeom.training import TrainConfig

MODEL = {"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10}
DATA = {"name": "digits", "seed": 0}
TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="cosine")


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def cfg(**kw):
    base = dict(model=MODEL, data=DATA, train=TRAIN, rounds=3)
    base.update(kw)
    return IMPConfig(**base)


def run(config, digits, **kw):
    return IMP(config, verbose=False, data=digits, **kw).run()


def test_density_nesting_zeros_and_biases(digits):
    n = 64 * 16 + 16 * 10
    checked = []
    biases = {}

    def cb(level, event, tr):
        params = dict(tr.model.named_parameters())
        if event == "step":
            for k, m in tr.masks.items():
                assert not params[k][~m].any()  # pruned weights are zero after every step
            checked.append(level)
        if event == "start":
            biases[level] = params["0.bias"].detach().clone()

    res = run(cfg(rounds=4), digits, callback=cb)
    assert [lv.level for lv in res.levels] == [0, 1, 2, 3, 4]
    assert set(checked) == {0, 1, 2, 3, 4}
    for r, lv in enumerate(res.levels):
        assert abs(lv.n_kept - 0.8**r * n) <= 1
        assert lv.sparsity == pytest.approx(1 - lv.n_kept / n)
        assert set(lv.masks) == {"0.weight", "2.weight"}  # no bias is ever masked
        if r:
            assert lv.masks.is_nested_in(res.levels[r - 1].masks)
        for k, m in lv.masks.items():
            assert not lv.weights[k][~m].any()
        assert lv.weights["0.bias"].count_nonzero() == 16  # biases untouched by pruning
    # rewinding to init restores the initial biases too (they are weights of the network, never masked)
    assert all(torch.equal(biases[0], b) for b in biases.values())


def test_same_seed_same_result_other_seed_differs(digits):
    a, b = run(cfg(rounds=2), digits), run(cfg(rounds=2), digits)
    for la, lb in zip(a.levels, b.levels):
        assert la.masks.equals(lb.masks)
        assert (la.test_acc, la.train_loss) == (lb.test_acc, lb.train_loss)
    c = run(cfg(rounds=2, seed=1), digits)
    assert not c.levels[1].masks.equals(a.levels[1].masks)


def _start_weights(config, digits):
    seen = {}
    captured = {}

    def cb(level, event, tr):
        if event == "start":
            seen[level] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        if level == 0 and event == "step":
            captured[tr.step] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        if level == 0 and event == "start":
            captured[0] = seen[0]

    res = run(config, digits, callback=cb)
    return res, seen, captured


@pytest.mark.parametrize("rewind,step", [(("iteration", 5), 5), (("epoch", 1), 22), ("init", 0)])
def test_weight_rewinding_restores_saved_weights_exactly(digits, rewind, step):
    # digits: 1347 training samples, batch 64 -> 22 iterations per epoch
    res, seen, captured = _start_weights(cfg(rounds=2, rewind=rewind), digits)
    ref = captured[step]
    for level in (1, 2):
        masks = res.levels[level].masks
        for k, v in seen[level].items():
            if k in masks:
                m = masks[k]
                assert torch.equal(v[m], ref[k][m])  # every unpruned weight is exactly the saved one
                assert not v[~m].any()
            else:
                assert torch.equal(v, ref[k])
    if step:
        # training resumes from iteration k: the remaining epochs only
        assert res.levels[1].history.epoch == list(range(step // 22 + 1, TRAIN.epochs + 1))


def test_lr_rewinding_keeps_trained_weights_and_replays_schedule(digits):
    res, seen, _ = _start_weights(cfg(rounds=2, rewind="lr"), digits)
    for level in (1, 2):
        prev = res.levels[level - 1].weights
        masks = res.levels[level].masks
        for k, v in seen[level].items():
            expect = prev[k] * masks[k] if k in masks else prev[k]
            assert torch.equal(v, expect)
        assert res.levels[level].history.lr == res.levels[0].history.lr
        assert res.levels[level].history.epoch == [1, 2]


def test_one_shot_random_baseline_and_layer_scope(digits):
    mag = run(cfg(rounds=1, q=0.5, scope="layer"), digits)
    rnd = run(cfg(rounds=1, q=0.5, scope="layer", prune="random"), digits)
    assert mag.levels[1].layer_sparsity == rnd.levels[1].layer_sparsity == {"0.weight": 0.5, "2.weight": 0.5}
    assert not mag.levels[1].masks.equals(rnd.levels[1].masks)
    # the magnitude level-1 masks are exactly a one-shot magnitude prune of the dense trained network
    ref = magnitude_prune(mag.model_at(0), 0.5, scope="layer")
    assert ref.equals(mag.levels[1].masks)


def test_keep_output_dense(digits):
    res = run(cfg(rounds=1, include_output=False), digits)
    assert set(res.levels[1].masks) == {"0.weight"}


def test_protect_is_passed_through(digits):
    keep = torch.zeros(16, 64, dtype=torch.bool)
    keep[:, :3] = True
    calls = []

    def protect(model, masks):
        calls.append(masks.density())
        return {"0.weight": keep}

    res = run(cfg(rounds=3), digits, protect=protect)
    assert len(calls) == 3
    for lv in res.levels:
        assert lv.masks["0.weight"][keep].all()


def test_config_round_trip_and_errors():
    c = cfg(rewind=("epoch", 1))
    assert IMPConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.model["seed"] == 0 and c.train.seed == 0
    c3 = c.with_seed(3)
    assert (c3.seed, c3.model["seed"], c3.train.seed) == (3, 3, 3)
    assert parse_rewind("iteration:7") == ("iteration", 7)
    with pytest.raises(ValueError, match="k < epochs"):
        cfg(rewind=("epoch", 2))
    with pytest.raises(ValueError, match="rewind"):
        cfg(rewind="weights")
    with pytest.raises(ValueError, match="q"):
        cfg(q=1.0)
    with pytest.raises(ValueError, match="seed once"):
        cfg(model={**MODEL, "seed": 4})
    with pytest.raises(TypeError, match="name"):
        cfg(model={"widths": [3]})
    with pytest.raises(TypeError, match="IMPConfig"):
        IMP({"model": MODEL})


def test_iteration_rewind_past_end_is_an_error(digits):
    with pytest.raises(ValueError, match="end of training"):
        run(cfg(rounds=1, rewind=("iteration", 10_000)), digits)


def test_cli(tmp_path, capsys):
    argv = ["--data", "digits", "--widths", "8", "--epochs", "1", "--rounds", "1", "--out", str(tmp_path)]
    argv.append("--quiet")
    assert imp_main(argv) == 0
    out = capsys.readouterr().out
    assert "run directory" in out and "\n    1    0.1993 " in out  # 592 weights: 474 kept
    assert imp_main(argv + ["--json"]) == 0  # same description: resumes from disk
    data = json.loads(capsys.readouterr().out)
    assert [lv["n_kept"] for lv in data["levels"]] == [592, 474]
    assert len(list(tmp_path.iterdir())) == 1


def test_demo_imp_and_section(tmp_path, digits):
    dense, pruned, masks, levels = demo_imp(digits, seed=0, out_dir=None, quick=True)
    assert isinstance(masks, Masks) and len(levels) == 11  # quick demo: 10 rounds
    assert masks.density() == pytest.approx(0.8**10, abs=1e-3)
    for k, m in masks.items():
        assert not dict(pruned.named_parameters())[k][~m].any()
    ctx = SimpleNamespace(imp_levels=levels, out_dir=tmp_path, seed=0, quick=True)
    md = demo_section(ctx)
    assert md.startswith("## ") and "imp_accuracy.png" in md and "Prunability" in md
    assert (tmp_path / "imp_accuracy.png").exists()
    assert "No IMP levels" in demo_section(SimpleNamespace(imp_levels=[], out_dir=tmp_path))


# ------------------------------------------------------------- the input-shape rule through IMP and the CLI
def test_cli_small_convnet_on_mnist1d(tmp_path, capsys):
    data = json.dumps({"name": "mnist1d", "num_samples": 200})
    assert imp_main(["--model", "small_convnet", "--data", data, "--rounds", "1", "--epochs", "1",
                     "--out", str(tmp_path), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["levels"]) == 2 and 0.0 <= out["levels"][1]["test_acc"] <= 1.0


def test_cli_lenet_300_100_on_mnist_images(tmp_path, capsys, mnist_dir):
    data = json.dumps({"name": "mnist", "root": mnist_dir, "n_train": 300})
    assert imp_main(["--model", "lenet_300_100", "--data", data, "--rounds", "1", "--epochs", "2",
                     "--lr", "0.02", "--batch-size", "32", "--out", str(tmp_path), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["levels"][0]["test_acc"] > 0.5  # 300 images in the model's (784,) view, pixels in order


def test_imp_feature_mismatch_is_a_clear_error(digits):
    config = cfg(model={"name": "lenet_300_100"}, rounds=1)
    with pytest.raises(ValueError, match=r"\(784,\).*\(64,\)"):
        run(config, digits)


def test_config_validates_the_model_description_at_construction():
    with pytest.raises(ValueError, match="unknown model name 'resnet'"):
        cfg(model={"name": "resnet"})
    with pytest.raises(TypeError, match="bad arguments for model 'mlp'.*depth"):
        cfg(model={**MODEL, "depth": 3})
    with pytest.raises(ValueError, match="n_in"):
        cfg(model={**MODEL, "n_in": 0})


def test_wrong_input_size_fails_before_training(digits, tmp_path):
    config = cfg(model={**MODEL, "n_in": 40})  # valid model, but digits has 64 features
    with pytest.raises(ValueError, match=r"does not fit data.*\(40,\).*\(64,\)"):
        IMP(config, verbose=False, data=digits)
    started = []
    imp = IMP(config, verbose=False, out_dir=tmp_path, callback=lambda *a: started.append(a))
    with pytest.raises(ValueError, match=r"does not fit data.*\(40,\).*\(64,\)"):
        imp.run()
    assert not started and not any(tmp_path.rglob("data_fingerprint.json"))


@pytest.mark.parametrize(
    "spec", ["none", "weights", 1, None, "epoch:x", "epoch", ("epoch",), ("step", 3), ("epoch", -1),
             ("epoch", 1.5), ("iteration", True), "iteration:-2", ["epoch", "2"]],
)
def test_every_bad_rewind_lists_all_accepted_forms(spec):
    forms = r'"init", "lr", \("epoch", k\) or "epoch:k", \("iteration", k\) or "iteration:k"'
    with pytest.raises(ValueError, match=forms):
        parse_rewind(spec)
    with pytest.raises(ValueError, match=forms):
        cfg(rewind=spec)


def test_accepted_rewind_forms():
    import numpy as np

    assert parse_rewind("lr") == "lr" and parse_rewind("init") == "init"
    assert parse_rewind("epoch:0") == parse_rewind(("epoch", 0)) == parse_rewind(["epoch", np.int64(0)])
    assert parse_rewind("iteration:12") == ("iteration", 12)


def test_masks_at_from_memory_and_from_the_run_directory(digits, tmp_path):
    from netgeom.pruning.imp import IMPLevel, IMPResult

    res = run(cfg(rounds=2), digits, out_dir=tmp_path)
    for r in range(3):
        assert res.masks_at(r) is res.levels[r].masks
    assert res.masks_at(-1) is res.levels[2].masks
    # a result rebuilt from its JSON holds no masks: they come from the run directory
    d = json.loads(res.to_json())
    levels = [IMPLevel(**{k: v for k, v in lv.items() if k not in ("masks", "weights", "history")})
              for lv in d["levels"]]
    back = IMPResult(config=d["config"], levels=levels, run_dir=d["run_dir"])
    for r in range(3):
        assert back.masks_at(r).equals(res.levels[r].masks)
    assert torch.equal(back.model_at(2)[0].weight, res.model_at(2)[0].weight)
    with pytest.raises(ValueError, match="level"):
        res.masks_at(3)
    with pytest.raises(ValueError, match="no run directory"):
        IMPResult(config=d["config"], levels=levels).masks_at(0)


# ------------------------------------------------------------- the user's model (factories, callables)
USER = {"factory": "tests._user_models:tiny_resnet", "width": 4}
USER_TRAIN = TrainConfig(epochs=3, batch_size=64, lr=0.05, schedule="cosine")


def _same_levels(a, b):
    assert len(a.levels) == len(b.levels)
    for la, lb in zip(a.levels, b.levels):
        assert la.masks.equals(lb.masks)
        assert (la.train_loss, la.test_loss, la.train_acc, la.test_acc) == (
            lb.train_loss, lb.test_loss, lb.train_acc, lb.test_acc)
        assert la.weights.keys() == lb.weights.keys()
        for k in la.weights:
            assert torch.equal(la.weights[k], lb.weights[k]), k


class _Stop(Exception):
    pass


@pytest.mark.parametrize("rewind", ["init", ("epoch", 1)])
def test_user_factory_resnet_resumes_bit_identically(tmp_path, digits, rewind):
    config = IMPConfig(model=USER, data=DATA, train=USER_TRAIN, rounds=2, rewind=rewind)
    desc = config.to_dict()["model"]
    assert desc == {"factory": "tests._user_models:tiny_resnet", "width": 4}  # no seed argument: none added
    ref = IMP(config, verbose=False, data=digits).run()

    def stop(level, event, tr):  # mid-epoch 3 of level 1, after two epoch checkpoints
        if level == 1 and event == "step" and tr.step == 2 * 22 + 3:
            raise _Stop

    with pytest.raises(_Stop):
        IMP(config, out_dir=tmp_path, verbose=False, data=digits, callback=stop).run()
    run_dir = next(tmp_path.iterdir())
    assert json.loads((run_dir / "description.json").read_text())["model"] == desc
    assert (run_dir / "level_1" / "trainer.pt").exists()
    res = IMP(config, out_dir=tmp_path, verbose=False, data=digits).run()
    _same_levels(res, ref)
    # the pruned network has its convs masked, BatchNorm untouched, and rebuilds from the description
    names = set(res.levels[2].masks)
    assert names == {"stem.weight", "conv1.weight", "conv2.weight", "fc.weight"}
    assert res.levels[2].density == pytest.approx(0.64, abs=1e-2)
    model = res.model_at(2)
    assert not model.training and not model.conv1.weight[~res.levels[2].masks["conv1.weight"]].any()
    with torch.no_grad():
        assert torch.equal(model(digits.X_test[:5]), res.model_at(2)(digits.X_test[:5]))
    # another seed is another network and another run directory
    other = IMP(config.with_seed(1), out_dir=tmp_path, verbose=False, data=digits).run()
    assert not torch.equal(other.levels[0].weights["stem.weight"], ref.levels[0].weights["stem.weight"])
    assert len(list(tmp_path.iterdir())) == 2


def test_factory_kwargs_and_seed_are_described_and_hashed(tmp_path, digits):
    a = IMPConfig(model={"factory": "tests._user_models:seeded_mlp", "width": 8}, data=DATA, train=TRAIN,
                  rounds=1, seed=3)
    assert a.model == {"factory": "tests._user_models:seeded_mlp", "width": 8, "seed": 3}  # takes seed: given
    b = dataclasses.replace(a, model={"factory": "tests._user_models:seeded_mlp", "width": 6})
    ra = IMP(a, out_dir=tmp_path, verbose=False, data=digits)
    rb = IMP(b, out_dir=tmp_path, verbose=False, data=digits)
    assert ra.run_dir.path != rb.run_dir.path  # the factory's kwargs are part of the hash
    assert b.build_model()[0].out_features == 6
    assert IMPConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    # the seed reaches the factory's own generator
    assert not torch.equal(a.build_model()[0].weight, a.with_seed(4).build_model()[0].weight)


def test_callable_model_needs_a_name(tmp_path, digits):
    from tests._user_models import tiny_resnet

    with pytest.raises(TypeError, match="model_name"):
        IMPConfig(model=tiny_resnet, data=DATA, train=TRAIN)
    with pytest.raises(TypeError, match="model_name"):
        IMPConfig(model=lambda: tiny_resnet(), data=DATA, train=TRAIN)
    c = IMPConfig(model=lambda: tiny_resnet(width=3), model_name="resnet-w3", data=DATA, train=TRAIN,
                  rounds=1)
    assert c.to_dict()["model"] == {"callable": "resnet-w3"}
    res = IMP(c, out_dir=tmp_path, verbose=False, data=digits).run()
    assert res.model_at(1).conv1.weight.shape == (3, 3, 3, 3)
    # the same name resumes; from_dict needs the callable back
    with pytest.raises(TypeError, match="model_fn"):
        IMPConfig.from_dict(c.to_dict())
    c2 = IMPConfig.from_dict(c.to_dict(), model_fn=c.model_fn)
    assert c2 == c and c2.with_seed(2).model_fn is c.model_fn
    events = []
    again = IMP(c2, out_dir=tmp_path, verbose=False, data=digits, callback=lambda *a: events.append(a)).run()
    assert events == [] and len(list(tmp_path.iterdir())) == 1
    _same_levels(res, again)


@pytest.mark.parametrize("model,exc,msg", [
    ({"factory": "tests._user_models:fixed_init"}, ValueError, "same initial weights for seeds 0 and 1"),
    ({"factory": "tests._user_models:unseeded"}, ValueError, "different networks from the same seed"),
    ({"factory": "tests._user_models:not_a_module"}, TypeError, "not a torch.nn.Module"),
    ({"factory": "tests._user_models:NOT_CALLABLE"}, TypeError, "not a Python function or class"),
    ({"factory": "os:system", "command": "echo hacked"}, ValueError, "standard-library"),
    ({"factory": "subprocess:run", "args": ["true"]}, ValueError, "standard-library"),
    ({"factory": "builtins:exec", "source": "1"}, ValueError, "standard-library"),
    ({"factory": "torch:relu"}, TypeError, "not a Python function or class"),
    ({"factory": "tests._user_models:missing"}, AttributeError, "no attribute 'missing'"),
    ({"factory": "tests._no_such_module:f"}, ImportError, "cannot import module"),
    ({"factory": "os.system('echo hi'):x"}, ValueError, "not a valid module name"),
    ({"factory": "tests._user_models:tiny_resnet()"}, ValueError, "not a valid attribute name"),
    ({"factory": "tests._user_models.tiny_resnet"}, ValueError, "package.module:function"),
    ({"factory": "tests._user_models:tiny_resnet", "depth": 3}, TypeError, "bad arguments"),
    ({"factory": "tests._user_models:tiny_resnet", "seed": 0}, ValueError, "takes no 'seed'"),
    ({"factory": "tests._user_models:tiny_resnet", "name": "mlp"}, ValueError, "exactly one"),
])
def test_bad_factories_are_refused_at_construction(model, exc, msg):
    with pytest.raises(exc, match=msg):
        IMPConfig(model=model, data=DATA, train=TRAIN)


def test_factory_import_runs_no_expression(tmp_path, monkeypatch):
    import importlib

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    IMPConfig(model={"factory": "tests._user_models:seeded_mlp"}, data=DATA, train=TRAIN)
    assert set(imported) == {"tests._user_models"}


# ------------------------------------------------------------- the user's data (torch Datasets, loaders)
def test_dataloader_input_equals_tensors_and_resumes(tmp_path, digits):
    from torch.utils.data import DataLoader, TensorDataset

    config = IMPConfig(model=USER, data={"name": "my-digits"}, train=USER_TRAIN, rounds=1)
    tensors = (digits.X_train, digits.y_train, digits.X_test, digits.y_test)
    ref = IMP(config, verbose=False, data=tensors).run()
    train_loader = DataLoader(TensorDataset(digits.X_train, digits.y_train), batch_size=64, shuffle=True)
    test_ds = TensorDataset(digits.X_test, digits.y_test)
    streamed = IMP(config, verbose=False, data=(train_loader, test_ds), in_memory=False)
    assert not streamed._data.train.in_memory and not streamed._data.test.in_memory
    _same_levels(streamed.run(), ref)
    loaded = IMP(config, verbose=False, data={"train": train_loader, "test": test_ds}, in_memory=True)
    assert loaded._data.train.in_memory
    _same_levels(loaded.run(), ref)

    # streamed, interrupted, resumed from a run directory started with tensors: same data, same result
    def stop(level, event, tr):
        if level == 1 and event == "step" and tr.step == 2 * 22 + 1:
            raise _Stop

    with pytest.raises(_Stop):
        IMP(config, out_dir=tmp_path, verbose=False, data=digits, callback=stop).run()
    res = IMP(config, out_dir=tmp_path, verbose=False, data=(train_loader, test_ds), in_memory=False).run()
    _same_levels(res, ref)
    # other data under the same description are refused
    with pytest.raises(ValueError, match="data differ"):
        IMP(config, out_dir=tmp_path, verbose=False,
            data=(TensorDataset(digits.X_train[:-1], digits.y_train[:-1]), test_ds)).run()
    with pytest.raises(ValueError, match="IMP\\(..., data=...\\)"):
        IMP(config, verbose=False).run()


def test_cli_runs_a_user_factory(tmp_path, capsys):
    argv = ["--model", "tests._user_models:tiny_resnet", "--data", "digits", "--rounds", "1", "--epochs", "1",
            "--out", str(tmp_path), "--quiet", "--json", "--threads", "1"]
    assert imp_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["model"] == {"factory": "tests._user_models:tiny_resnet"}
    assert [lv["level"] for lv in out["levels"]] == [0, 1]
    from netgeom.cli import UsageError

    with pytest.raises(UsageError, match="--threads must be 'auto' or a positive integer"):
        imp_main(argv[:-1] + ["0"])
