"""Control messages to workers on Redis Streams: a cancel reaches the worker running the job.

Each worker process has its own stream, `zimage:control:<worker>`, so a message reaches only it, and a
message sent while it was reconnecting is still there to read (pub/sub would drop it). A lost message
only delays a cancel: the row's flag comes back with the worker's next lease renewal (issue 16,
"Cancel across machines").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .redis_streams import RedisStreams, entries, stream_entries

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT


def control_key(worker: str) -> str:
    return f"zimage:control:{worker}"


@dataclass(frozen=True)
class Control:
    """A message to the worker running a job: `cancel` (job, attempt) for now. The attempt tells the
    worker's current run from an older one that the message no longer concerns."""

    job_id: str
    attempt: int
    action: str = "cancel"


async def send_control(streams: RedisStreams, worker: str, message: Control) -> None:
    """Send a control message to one worker (its own stream, so no other worker sees it, and one it
    missed while reconnecting is still there to read)."""
    key = control_key(worker)
    fields: dict[FieldT, EncodableT] = {
        "job": message.job_id,
        "attempt": message.attempt,
        "action": message.action,
    }
    async with streams.redis.pipeline(transaction=True) as pipe:
        pipe.xadd(key, fields, maxlen=streams.settings.control_maxlen, approximate=True)
        # A worker that is gone for good leaves no stream behind for long.
        pipe.expire(key, 86_400)
        await pipe.execute()


class ControlReader:
    """A worker's control messages, from the moment it `start`s (older ones were for its previous
    life: the lease renewal tells it of any cancel it must still honour)."""

    def __init__(self, streams: RedisStreams, worker: str) -> None:
        self._redis = streams.redis
        self._key = control_key(worker)
        self._last = "0-0"

    async def start(self) -> None:
        newest = entries(await self._redis.xrevrange(self._key, count=1))
        self._last = newest[0][0] if newest else "0-0"

    async def read(self, block_ms: int = 1000) -> list[Control]:
        """The messages since the last read, waiting up to `block_ms` for one."""
        reply = await self._redis.xread({self._key: self._last}, block=block_ms)
        messages = []
        for entry in stream_entries(reply, self._key):
            self._last = entry[0]
            fields = entry[1]
            messages.append(Control(fields["job"], int(fields["attempt"]), fields["action"]))
        return messages
