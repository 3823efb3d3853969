"""The approximate-time synchronizer: message_filters semantics without message_filters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stereo_pose3d.sync import ApproximateTimeSynchronizer, SimpleFilter


def msg(t: float, tag: str = "") -> SimpleNamespace:
    ns = round(t * 1e9)
    stamp = SimpleNamespace(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp), tag=tag or f"{t:.3f}")


def make(n: int = 2, queue_size: int = 10, slop: float = 0.02, **kw):
    inputs = [SimpleFilter() for _ in range(n)]
    sync = ApproximateTimeSynchronizer(inputs, queue_size, slop, **kw)
    out: list[tuple] = []
    sync.registerCallback(lambda *m: out.append(tuple(x.tag for x in m)))
    return inputs, sync, out


def test_exact_and_approximate_pairs_in_input_order():
    (a, b), sync, out = make()
    a.signalMessage(msg(1.000, "L1"))
    assert out == []
    b.signalMessage(msg(1.005, "R1"))
    assert out == [("L1", "R1")]
    b.signalMessage(msg(2.000, "R2"))  # right first: callback still gets (left, right)
    a.signalMessage(msg(2.010, "L2"))
    assert out[-1] == ("L2", "R2")
    assert sync.queued() == 0


def test_outside_slop_never_pairs_and_closest_wins():
    (a, b), _, out = make(slop=0.02)
    a.signalMessage(msg(1.0, "L"))
    b.signalMessage(msg(1.05, "far"))
    assert out == []
    b.signalMessage(msg(1.012, "near"))
    b.signalMessage(msg(0.995, "nearest"))  # arrives last, but L is already used
    assert out == [("L", "near")]
    a.signalMessage(msg(1.0, "L2"))  # closest queued right message within slop
    assert out[-1] == ("L2", "nearest")


def test_slop_is_strict_like_message_filters():
    (a, b), _, out = make(slop=0.01)
    a.signalMessage(msg(1.0))
    b.signalMessage(msg(1.01))  # exactly slop apart: message_filters requires spread < slop
    assert out == []
    b.signalMessage(msg(1.0099))
    assert len(out) == 1


def test_queue_size_evicts_oldest_and_bounds_memory():
    (a, b), sync, out = make(queue_size=3)
    for i in range(100):
        a.signalMessage(msg(i * 1.0))  # never matched
    assert sync.queued() == 3
    b.signalMessage(msg(0.0))  # evicted long ago
    assert out == []
    b.signalMessage(msg(99.0))
    assert len(out) == 1


def test_duplicate_stamp_replaces_and_three_inputs():
    (a, b, c), _, out = make(n=3, slop=0.05)
    a.signalMessage(msg(5.0, "a1"))
    a.signalMessage(msg(5.0, "a2"))  # same stamp: newest kept
    b.signalMessage(msg(5.02, "b"))
    assert out == []
    c.signalMessage(msg(4.99, "c"))
    assert out == [("a2", "b", "c")]


def test_headerless_dropped_unless_allowed():
    (a, b), _, out = make()
    a.signalMessage(SimpleNamespace(tag="x"))
    assert out == []
    (a, b), _, out = make(allow_headerless=True, slop=1.0)
    a.signalMessage(SimpleNamespace(tag="x"))
    b.signalMessage(SimpleNamespace(tag="y"))
    assert out == [("x", "y")]


def test_manual_feeding_by_index_and_bad_arguments():
    sync = ApproximateTimeSynchronizer(2, 5, 0.02)
    out = []
    sync.registerCallback(
        lambda left, right, extra: out.append((left.tag, right.tag, extra)), "arg"
    )
    sync.add(msg(1.0, "l"), 0)
    sync.add(msg(1.001, "r"), 1)
    assert out == [("l", "r", "arg")]
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSynchronizer(2, 0, 0.1)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSynchronizer(2, 1, -1.0)
