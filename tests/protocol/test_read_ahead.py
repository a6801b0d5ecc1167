"""read_ahead: same items in the same order, produced on another thread, errors in order, early stops clean up."""
from __future__ import annotations

import threading
import time

import pytest

from common.read_ahead import read_ahead


def test_items_come_in_order_and_are_made_on_another_thread():
    made_on = []

    def items():
        for i in range(50):
            made_on.append(threading.get_ident())
            yield i
    assert list(read_ahead(items())) == list(range(50))
    assert threading.get_ident() not in made_on


def test_an_error_while_producing_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise OSError("block 3 cannot be read")
    got = []
    with pytest.raises(OSError, match="block 3"):
        for x in read_ahead(items()):
            got.append(x)
    assert got == [1, 2]


def test_stopping_early_waits_for_the_item_in_flight_and_closes_the_source():
    started, release, closed = threading.Event(), threading.Event(), []

    def items():
        try:
            yield 0
            started.set()
            release.wait(5)
            yield 1
        finally:
            closed.append(True)
    gen = read_ahead(items())
    assert next(gen) == 0
    started.wait(5)  # item 1 is being produced, and blocked
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    gen.close()  # must not close the source while another thread is inside it
    assert time.monotonic() - t0 >= 0.15 and closed == [True]


def test_an_empty_source_gives_nothing():
    assert list(read_ahead(iter(()))) == []
