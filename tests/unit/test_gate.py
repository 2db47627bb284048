"""The actor's priority gate: one holder, the oldest request's call next, helpers never queue."""

from __future__ import annotations

import threading
import time

from svdpipe.gate import PriorityGate


def test_waiters_enter_oldest_first_not_in_arrival_order():
    gate = PriorityGate()
    order: list[float] = []
    gate_held = threading.Event()

    def call(priority: float) -> None:
        with gate.hold(priority):
            order.append(priority)

    with gate.hold(0.0):
        gate_held.set()
        threads = []
        for p in (5.0, 3.0, 9.0, 1.0):  # arrive newest-first while the gate is held
            t = threading.Thread(target=call, args=(p,))
            t.start()
            threads.append(t)
        deadline = time.time() + 10
        while gate.waiting < 4 and time.time() < deadline:
            time.sleep(0.005)
        assert gate.waiting == 4 and gate.busy
    for t in threads:
        t.join(10)
    assert order == [1.0, 3.0, 5.0, 9.0]
    assert not gate.busy and gate.waiting == 0


def test_equal_priorities_keep_arrival_order():
    gate = PriorityGate()
    order: list[int] = []
    with gate.hold(0.0):
        threads = [threading.Thread(target=lambda i=i: _enter(gate, 1.0, order, i)) for i in range(3)]
        for t in threads:
            t.start()
            while gate.waiting < len(order) + threads.index(t) + 1:
                time.sleep(0.002)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2]


def _enter(gate: PriorityGate, priority: float, order: list[int], i: int) -> None:
    with gate.hold(priority):
        order.append(i)


def test_try_acquire_only_when_free_and_nobody_waits():
    gate = PriorityGate()
    assert gate.try_acquire() and gate.busy
    assert not gate.try_acquire()
    gate.release()
    assert gate.try_acquire()
    gate.release()
