"""The hand-off from a worker's thread to the event loop (zimage_sse/service/dispatcher.py)."""

from __future__ import annotations

import asyncio
import threading

from zimage_sse.service.dispatcher import Handoff


async def test_a_report_from_the_worker_thread_runs_on_the_loop() -> None:
    loop = asyncio.get_running_loop()
    ran: list[tuple[str, bool]] = []
    arrived = asyncio.Event()

    def on_loop(value: str) -> None:
        ran.append((value, threading.current_thread() is threading.main_thread()))
        arrived.set()

    thread = threading.Thread(target=Handoff(loop), args=(on_loop, "step 1"))
    thread.start()
    thread.join()
    await asyncio.wait_for(arrived.wait(), 5)
    assert ran == [("step 1", True)]


def test_a_report_after_the_loop_has_closed_is_dropped_not_raised() -> None:
    """Shutdown: the worker's last step lands after the loop is gone; without the guard,
    call_soon_threadsafe raises RuntimeError in the worker's thread."""
    loop = asyncio.new_event_loop()
    handoff = Handoff(loop)
    loop.close()
    errors: list[BaseException] = []

    def report() -> None:
        try:
            handoff(lambda: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=report)
    thread.start()
    thread.join()
    assert errors == []
