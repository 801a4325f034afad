"""A child forked while another thread of the parent holds netgeom's RNG lock builds its models anyway."""

import multiprocessing
import threading

import torch
from _platform import X86_LINUX, unavailable

from netgeom import mlp
from netgeom._seeding import _GLOBAL_RNG_LOCK


def _weights_in_child():
    return mlp(4, [3], 2, seed=7)[0].weight.detach().clone()


def test_a_child_forked_while_another_thread_holds_the_rng_lock_still_seeds():
    if "fork" not in multiprocessing.get_all_start_methods():
        unavailable("no fork start method on this platform", expected=X86_LINUX)
    want = _weights_in_child()
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with _GLOBAL_RNG_LOCK:
            inside.set()
            leave.wait(60)

    t = threading.Thread(target=hold)
    try:
        t.start()
        assert inside.wait(10)
        with multiprocessing.get_context("fork").Pool(1) as child:
            got = child.apply_async(_weights_in_child).get(timeout=20)
        assert torch.equal(got, want)
    finally:
        leave.set()
        t.join(10)
    with _GLOBAL_RNG_LOCK, _GLOBAL_RNG_LOCK:  # re-entrant, and free again
        assert torch.equal(_weights_in_child(), want)
