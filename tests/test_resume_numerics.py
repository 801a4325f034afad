"""A run directory records the torch thread count and device it was started with: the thread count changes
the rounding of every training step, so a resume on other ones would match neither uninterrupted run."""

import json

import pytest
import torch

from netgeom import IMP, IMPConfig
from netgeom.data.datasets import load_digits
from netgeom.training import TrainConfig

CFG = IMPConfig(
    model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10},
    data={"name": "digits", "seed": 0},
    train=TrainConfig(epochs=2, batch_size=128, lr=0.05),
    rounds=1,
)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def _interrupted(out, digits, threads):
    """Start a run with ``threads`` and stop it after the first epoch of level 1."""

    def stop(level, event, tr):
        if level == 1 and event == "epoch" and tr.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        IMP(CFG, out_dir=out, verbose=False, data=digits, threads=threads, callback=stop).run()
    (run,) = out.glob("imp-*")
    return run


def _weights(res):
    return res.levels[-1].weights


def test_numerics_are_recorded(tmp_path, digits):
    run = _interrupted(tmp_path, digits, threads=2)
    assert json.loads((run / "numerics.json").read_text()) == {"threads": 2, "device": "cpu"}


def test_auto_resumes_with_the_recorded_threads(tmp_path, digits):
    # "auto" picks 1 thread for this small net; the run was started with 2, and resumes with 2
    _interrupted(tmp_path, digits, threads=2)
    seen = []
    res = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads="auto",
              callback=lambda lv, ev, tr: seen.append(torch.get_num_threads())).run()
    assert seen and set(seen) == {2}
    ref = IMP(CFG, verbose=False, data=digits, threads=2).run()
    assert all(torch.equal(_weights(res)[k], _weights(ref)[k]) for k in _weights(ref))


def test_other_explicit_threads_are_refused(tmp_path, digits):
    _interrupted(tmp_path, digits, threads=2)
    with pytest.raises(ValueError, match=r"started with 2 torch thread\(s\), and threads=1 now.*threads=2"):
        IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads=1).run()
    # the refusal changed nothing: the run still resumes with its own count
    IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads=2).run()


def test_other_device_is_refused(tmp_path, digits):
    run = _interrupted(tmp_path, digits, threads=1)
    (run / "numerics.json").write_text(json.dumps({"threads": 1, "device": "cuda:0"}))
    with pytest.raises(ValueError, match=r"started on device 'cuda:0', and device='cpu' now"):
        IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads=1).run()


def test_a_finished_run_reads_back_with_any_threads(tmp_path, digits):
    first = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads=2).run()
    again = IMP(CFG, out_dir=tmp_path, verbose=False, data=digits, threads=1).run()
    assert all(torch.equal(_weights(first)[k], _weights(again)[k]) for k in _weights(first))
