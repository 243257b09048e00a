"""How other threads reach the queue's loop: ``QueueLoop.call`` and ``QueueLoop.wrap``.

Calls from other threads share one inbox and one wake-up: while a drain is due, a new call adds to
it without writing to the loop's self-pipe again. They run in the order they were made, one that
raises does not stop the others, and ``wrap`` gives ``asyncio.wrap_future``'s outcomes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from imgnb.queue.loop import QueueLoop, until_set


@pytest.fixture
def queue_loop() -> Iterator[QueueLoop]:
    loop = QueueLoop()  # no running loop here: it starts its own thread
    assert loop.owns_thread
    yield loop
    loop.stop()


def on_loop(queue_loop: QueueLoop, fn: Any) -> Any:
    """Run ``fn()`` on the loop and wait for its result."""
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    queue_loop.loop.call_soon_threadsafe(lambda: done.set_result(fn()))
    return done.result(timeout=10)


def test_calls_from_threads_run_in_order_with_one_wake_up_while_a_drain_is_due(
    queue_loop: QueueLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    wakes: list[object] = []
    held = threading.Event()
    released = threading.Event()
    real = queue_loop.loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wakes.append(callback)
        return real(callback, *args)

    def hold() -> None:  # keeps the loop busy, so that the calls below find the drain still due
        held.set()
        assert released.wait(10)

    queue_loop.loop.call_soon_threadsafe(hold)
    assert held.wait(10)
    monkeypatch.setattr(queue_loop.loop, "call_soon_threadsafe", counting)
    for i in range(50):
        queue_loop.call(seen.append, i)
    released.set()
    done = threading.Event()
    queue_loop.call(done.set)
    assert done.wait(10)
    assert seen == list(range(50))
    assert len(wakes) <= 2  # one for the 50, at most one more for the call made after they ran


def test_a_call_that_raises_is_reported_and_the_next_ones_still_run(queue_loop: QueueLoop) -> None:
    reported: list[dict[str, Any]] = []
    on_loop(queue_loop, lambda: queue_loop.loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx)))
    done = threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    queue_loop.call(boom)
    queue_loop.call(done.set)
    assert done.wait(10)
    assert [type(ctx["exception"]) for ctx in reported] == [ValueError]


def test_a_call_on_the_loop_thread_runs_at_once(queue_loop: QueueLoop) -> None:
    seen: list[str] = []

    def here() -> list[str]:
        queue_loop.call(seen.append, "now")
        return list(seen)

    assert on_loop(queue_loop, here) == ["now"]


def test_wrap_gives_the_result_the_error_or_the_cancellation(queue_loop: QueueLoop) -> None:
    async def outcome(future: concurrent.futures.Future[int]) -> object:
        try:
            return await queue_loop.wrap(future)
        except asyncio.CancelledError:
            return "cancelled"
        except KeyError as exc:
            return exc

    futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(3)]
    waiting = [queue_loop.submit(outcome(f)) for f in futures]
    threading.Thread(target=futures[0].set_result, args=(7,)).start()
    threading.Thread(target=futures[1].set_exception, args=(KeyError("k"),)).start()
    futures[2].cancel()
    results = [w.result(timeout=10) for w in waiting]
    assert results[0] == 7
    assert isinstance(results[1], KeyError)
    assert results[2] == "cancelled"


def test_cancelling_the_waiter_cancels_the_wrapped_future(queue_loop: QueueLoop) -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def cancel_it() -> None:
        waiter = queue_loop.wrap(future)
        waiter.cancel()
        await asyncio.sleep(0)  # the waiter's done-callbacks run in the next turn of the loop

    queue_loop.submit(cancel_it()).result(timeout=10)
    assert future.cancelled()


def test_calls_after_the_loop_closed_are_dropped(queue_loop: QueueLoop) -> None:
    queue_loop.stop()
    assert queue_loop.loop.is_closed()
    queue_loop.call(print, "never")  # no error, nothing runs


async def test_a_wait_for_an_event_gives_way_to_a_cancellation_that_comes_as_the_event_is_set() -> None:
    """``asyncio.wait_for`` on Python 3.11 returned as if nothing happened: a background task so
    spared when its loop shut down ran on, and the shutdown waited for it forever."""
    cancelled = 0
    for turns in range(4):  # the cancellation comes 0-3 turns of the loop after the event is set
        event = asyncio.Event()
        waiting = asyncio.ensure_future(until_set(event, timeout=30))
        await asyncio.sleep(0)
        event.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.done():  # it saw the event before the cancellation came
            assert waiting.result() is True
            continue
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        cancelled += 1
    assert cancelled >= 1  # the case that matters was met


async def test_a_wait_for_an_event_says_whether_it_was_set_or_timed_out() -> None:
    event = asyncio.Event()
    assert await until_set(event, timeout=0.01) is False
    event.set()
    assert await until_set(event, timeout=30) is True
