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


def _threads_in_child():
    from netgeom.training import torch_threads

    before = torch.get_num_threads()
    with torch_threads(2):
        inside = torch.get_num_threads()
    return before, inside, torch.get_num_threads()


def test_a_child_forked_while_another_thread_holds_torch_threads_gets_its_count_back():
    # the parent's other thread, training with threads=1, does not exist in the child: the child must
    # neither refuse its own thread count as clashing with it nor keep that thread's count
    from netgeom.training import torch_threads

    if "fork" not in multiprocessing.get_all_start_methods():
        unavailable("no fork start method on this platform", expected=X86_LINUX)
    n0 = torch.get_num_threads()
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with torch_threads(1):
            inside.set()
            leave.wait(60)

    t = threading.Thread(target=hold)
    try:
        torch.set_num_threads(3)
        t.start()
        assert inside.wait(10)
        with multiprocessing.get_context("fork").Pool(1) as child:
            got = child.apply_async(_threads_in_child).get(timeout=20)
        assert got == (3, 2, 3)
    finally:
        leave.set()
        t.join(10)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(n0)
