"""Approximate time synchronisation: message_filters where installed, this module's own where not.

:class:`ApproximateTimeSynchronizer` reproduces the semantics of ``message_filters``'
(ROS 2, Python) class of the same name: one queue per input keyed by header stamp, at most
``queue_size`` messages each (the oldest evicted); when a message arrives, the other queues'
messages within ``slop`` seconds of it are tried closest first, and the first combination whose
stamp spread is strictly below ``slop`` is emitted (callbacks get one message per input, in
input order) and removed from the queues. Messages without a header are dropped with a warning
unless ``allow_headerless``, which stamps them with the arrival time.

Also :class:`SimpleFilter` and :class:`Subscriber` (a subscription with an explicit QoS; note that
``message_filters.Subscriber`` silently defaults to a reliable depth-10 QoS, which never matches a
best-effort camera driver) and :func:`make_synchronizer`, which picks the implementation.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

try:  # pragma: no cover - message_filters is not installed in the venv
    import message_filters as _message_filters
except Exception:  # any import problem means "not available"
    _message_filters = None

HAVE_MESSAGE_FILTERS = _message_filters is not None

_log = logging.getLogger(__name__)


class SimpleFilter:
    """Callback fan-out as in message_filters: ``registerCallback(cb, *args)`` then
    ``signalMessage(*msgs)`` calls ``cb(*msgs, *args)`` for every registered callback."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}

    def registerCallback(self, cb: Callable[..., Any], *args: Any) -> int:
        conn = len(self.callbacks)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class Subscriber(SimpleFilter):
    """A subscription feeding a filter chain (``message_filters.Subscriber`` look-alike).

    Args:
        node: an rclpy node.
        msg_type: message class.
        topic: topic name (relative names resolve in the node's namespace).
        qos_profile: the QoS to subscribe with (always pass it explicitly).
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, qos_profile: Any, **kwargs: Any):
        super().__init__()
        self.node = node
        self.topic = topic
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos_profile, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:
        return self.sub.topic_name


def _stamp_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    if hasattr(stamp, "nanoseconds"):  # rclpy.time.Time
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class ApproximateTimeSynchronizer(SimpleFilter):
    """Drop-in for ``message_filters.ApproximateTimeSynchronizer`` (same arguments, same matching).

    Args:
        fs: input filters (anything with ``registerCallback``), or ``None`` entries / an int count
            to feed messages by hand through :meth:`add`.
        queue_size: messages kept per input (oldest evicted first).
        slop: a synchronised set's stamps span strictly less than this, seconds.
        allow_headerless: stamp messages without ``header.stamp`` with the arrival (wall) time
            instead of dropping them.
    """

    def __init__(
        self,
        fs: Sequence[Any] | int,
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
    ) -> None:
        super().__init__()
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not float(slop) >= 0.0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = round(float(slop) * 1e9)
        self.allow_headerless = allow_headerless
        self.lock = threading.Lock()
        n = fs if isinstance(fs, int) else len(fs)
        self.queues: list[dict[int, Any]] = [{} for _ in range(n)]
        self.input_connections = []
        if not isinstance(fs, int):
            self.connectInput(fs)

    def connectInput(self, fs: Sequence[Any]) -> None:
        self.queues = [{} for _ in fs]
        self.input_connections = [
            f.registerCallback(self.add, q, i)
            for i, (f, q) in enumerate(zip(fs, self.queues, strict=True))
            if f is not None
        ]

    def add(self, msg: Any, my_queue: dict[int, Any] | int, my_queue_index: int | None = None):
        """Add ``msg`` to an input (given as its queue dict, or its index) and emit if it completes
        a set."""
        if isinstance(my_queue, int):
            my_queue_index, my_queue = my_queue, self.queues[my_queue]
        stamp = _stamp_ns(msg)
        if stamp is None:
            if not self.allow_headerless:
                _log.warning(
                    "cannot synchronise a message without header.stamp unless allow_headerless"
                )
                return
            stamp = time.time_ns()
        emitted = None
        with self.lock:
            my_queue[stamp] = msg
            while len(my_queue) > self.queue_size:
                del my_queue[min(my_queue)]
            if stamp not in my_queue:  # older than a full queue (e.g. a clock reset): evicted
                return
            if my_queue_index is None:
                my_queue_index = next(i for i, q in enumerate(self.queues) if q is my_queue)
            # Per other input: its stamps within slop of the new one, closest first.
            candidates = []
            for i, queue in enumerate(self.queues):
                if i == my_queue_index:
                    continue
                near = sorted((abs(s - stamp), s) for s in queue if abs(s - stamp) <= self.slop_ns)
                if not near:
                    return
                candidates.append([s for _, s in near])
            for combo in itertools.product(*candidates):
                stamps = list(combo)
                stamps.insert(my_queue_index, stamp)
                if max(stamps) - min(stamps) < self.slop_ns:  # strict, as message_filters
                    emitted = [q[s] for q, s in zip(self.queues, stamps, strict=True)]
                    for q, s in zip(self.queues, stamps, strict=True):
                        del q[s]
                    break
        if emitted is not None:
            self.signalMessage(*emitted)

    def queued(self) -> int:
        """Messages currently held over all inputs (bounded by ``queue_size`` x inputs)."""
        with self.lock:
            return sum(len(q) for q in self.queues)

    def clear(self) -> None:
        with self.lock:
            for q in self.queues:
                q.clear()


def make_synchronizer(
    node: Any,
    msg_type: Any,
    topics: Sequence[str],
    qos_profile: Any,
    queue_size: int,
    slop: float,
    prefer_message_filters: bool = True,
) -> tuple[Any, list[Any]]:
    """Subscribe to ``topics`` with the given QoS and approximately synchronise them.

    Uses ``message_filters`` where installed (passing the QoS explicitly), else this module.
    Returns ``(synchronizer, subscribers)``; call ``synchronizer.registerCallback(cb)``.
    """
    if prefer_message_filters and _message_filters is not None:  # pragma: no cover
        subs = [
            _message_filters.Subscriber(node, msg_type, t, qos_profile=qos_profile) for t in topics
        ]
        return _message_filters.ApproximateTimeSynchronizer(subs, queue_size, slop), subs
    subs = [Subscriber(node, msg_type, t, qos_profile) for t in topics]
    return ApproximateTimeSynchronizer(subs, queue_size, slop), subs
