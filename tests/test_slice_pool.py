"""The slice engines' buffer pool: a buffer is never handed out while an array views it, pools are per
thread, and what is kept between slices is bounded."""

import threading

import numpy as np

from netgeom.regions import _slice


def _owner(a):
    return a.base if a.base is not None else a


def test_no_reuse_while_viewed():
    a = _slice._buffer((300, 100))
    a[:] = 1.0
    v = a[5:7]
    del a
    b = _slice._buffer((300, 100))
    b[:] = 2.0
    assert np.all(v == 1.0)  # the view's memory was not handed out again
    del v
    c = _slice._buffer((250, 100))  # now the first buffer is free again and fits
    assert _owner(c) is not _owner(b)
    assert any(_owner(c) is x for x in _slice._POOL.bufs)


def test_small_requests_bypass_the_pool():
    n = len(_slice._POOL.bufs)
    a = _slice._buffer((10, 10), np.int64)
    assert a.shape == (10, 10) and a.dtype == np.int64
    assert len(_slice._POOL.bufs) == n


def test_pools_are_per_thread_and_trimmed():
    seen = {}

    def work():
        a = _slice._buffer((1000, 100))
        seen["pool"] = list(_slice._POOL.bufs)
        seen["owner"] = _owner(a)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not any(seen["owner"] is x for x in _slice._POOL.bufs)
    big = [_slice._buffer((1 << 20,)) for _ in range(3)]  # 8 MiB each
    kept = sum(b.nbytes for b in _slice._POOL.bufs)
    _slice.pool_trim(0)
    # buffers still viewed are kept, the free ones dropped
    assert sum(b.nbytes for b in _slice._POOL.bufs) <= kept
    assert all(any(_owner(x) is b for x in big) for b in _slice._POOL.bufs)
    del big
    _slice.pool_trim(0)
    assert _slice._POOL.bufs == []
