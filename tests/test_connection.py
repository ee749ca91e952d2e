"""The stream's connection (connection.py, server.py): the pure parts, without a server.

End to end, every stream test on a real gateway writes through the direct
path (it is the default on the gateway's own server); these hold the pieces
it rests on to what uvicorn and asyncio would do.
"""

from __future__ import annotations

import asyncio
import collections

from hypothesis import given
from hypothesis import strategies as st

from gateway import server


@given(st.binary(min_size=1, max_size=5000))
def test_a_chunk_is_framed_as_uvicorn_frames_it(data: bytes) -> None:
    size, _, rest = server._chunk(data).partition(b"\r\n")
    assert int(size, 16) == len(data) and rest == data + b"\r\n"


def test_one_frame_is_framed_once_for_every_stream() -> None:
    frame = b"data: {}\n\n"
    assert server._chunk(frame) is server._chunk(frame)
    other = b"data: []\n\n"
    assert server._chunk(other) == b"a\r\ndata: []\n\n\r\n"  # a new frame is framed anew
    assert server._chunk(frame) == b"a\r\ndata: {}\n\n\r\n"


def test_a_lean_event_wakes_every_waiter_and_keeps_none() -> None:
    async def scenario() -> None:
        event = server.lean(asyncio.Event())
        assert isinstance(event._waiters, list)  # type: ignore[attr-defined]
        waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        cancelled = waiters.pop()
        cancelled.cancel()  # a waiter that gives up is removed
        await asyncio.sleep(0)
        event.set()
        assert await asyncio.gather(*waiters) == [True, True]
        assert event._waiters == []  # type: ignore[attr-defined]
        event.clear()
        assert not event.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_an_event_with_waiters_is_left_as_it_is() -> None:
    async def scenario() -> None:
        event = asyncio.Event()
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.sleep(0)
        server.lean(event)
        assert isinstance(event._waiters, collections.deque)  # type: ignore[attr-defined]
        event.set()
        await waiter

    asyncio.run(asyncio.wait_for(scenario(), 5))


@given(st.lists(st.integers(), max_size=20), st.integers(min_value=0, max_value=20))
def test_the_pipeline_queue_is_first_in_first_out_as_uvicorn_expects(
    items: list[int], pops: int
) -> None:
    ours, theirs = server._Pipeline(), collections.deque()  # type: ignore[var-annotated]
    for item in items:
        ours.appendleft(item)  # type: ignore[arg-type]
        theirs.appendleft(item)
    for _ in range(min(pops, len(items))):
        assert ours.pop() == theirs.pop()
    assert bool(ours) == bool(theirs)
