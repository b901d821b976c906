"""Events on Redis Streams, the transport past one machine: publish and replay (redis_bus.py reads
them into a process, redis_control.py carries cancels).

Only the distributed mode imports this module, and it imports redis-py only inside `connect`, so the
embedded default (`make run`) never loads a Redis client.

Keys (one Redis, or one per deployment; nothing else lives under `zimage:`):
  zimage:events               every event (the SSE feed /api/events), MAXLEN ~ global_maxlen
  zimage:job:<id>             one job's events, MAXLEN ~ job_maxlen, expires job_ttl_s after its
                              terminal event
  zimage:job:<id>:preview     the ids of the job's newest preview, so the next one replaces it
  zimage:control:<worker>     control messages (cancels) for one worker process

Ids. An SSE id is an integer n; its stream entry has the explicit id `n-0`, on both kinds of stream:
  - a job stream counts the job's events 1, 2, 3 ... (the seq the embedded bus gives them), whichever
    worker publishes: the next seq is one past the stream's newest entry (or past the seq the publisher
    itself last gave, if higher: after Redis lost its data the job numbers on instead of starting again,
    so a client's Last-Event-ID never names a different event);
  - the global stream's ids are Redis's clock in microseconds, or one past its newest entry if higher,
    the way the embedded bus counts from an epoch in microseconds: they rise across workers and across
    a Redis restart that lost the stream, and fit a JSON number (2^53 is year 2255).
The ids are chosen inside one Lua script that adds the event to both streams: a script runs atomically
like MULTI/EXEC, and unlike MULTI it can read the newest ids first and stop before writing anything.
Each entry also records `p`, the newest id on its stream when it was added, so a replay or the reader
can tell "nothing missing" from "trimmed, or lost in a restart" (`_complete`).

Attempts. A job's entries carry the attempt that published them; the script refuses an event from an
attempt older than the stream's newest entry (a worker frozen past its lease and then back), so a stale
worker can never interleave its steps with the current attempt's (`StaleAttempt`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from ..events import TERMINAL, Event
from .bus import Replay

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript
    from redis.typing import StreamRangeResponse, XReadResponse

GLOBAL = "zimage:events"

Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py returns it: id, fields

PUBLISH = """
local function top(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return 0, nil end
  return tonumber(string.match(last[1][1], '^(%d+)')), last[1][2]
end
local function id(n) return string.format('%.0f', n) end
local kind, data, job, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local gtop = top(KEYS[1])
local now = redis.call('TIME')
local g = math.max(tonumber(now[1]) * 1000000 + tonumber(now[2]), gtop + 1)
local seq = 0
if job ~= '' then
  local jtop, fields = top(KEYS[2])
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == 'a' and tonumber(fields[i + 1]) > tonumber(attempt) then
        return redis.error_reply('STALE attempt ' .. attempt .. ' of job ' .. job .. ' after attempt '
          .. fields[i + 1])
      end
    end
  end
  seq = math.max(jtop, tonumber(ARGV[4])) + 1
  if kind == 'preview' then
    local old = redis.call('HMGET', KEYS[3], 's', 'g')
    if old[1] then
      redis.call('XDEL', KEYS[2], old[1] .. '-0')
      redis.call('XDEL', KEYS[1], old[2] .. '-0')
    end
    redis.call('HSET', KEYS[3], 's', id(seq), 'g', id(g))
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], id(seq) .. '-0', 'k', kind, 'd', data, 'j', job,
    's', id(seq), 'g', id(g), 'a', attempt, 'p', id(jtop))
  if ARGV[9] == '1' then
    redis.call('PEXPIRE', KEYS[2], ARGV[8])
    redis.call('DEL', KEYS[3])
  else
    redis.call('PERSIST', KEYS[2])
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], id(g) .. '-0', 'k', kind, 'd', data, 'j', job,
  's', id(seq), 'g', id(g), 'a', attempt, 'p', id(gtop))
return {id(seq), id(g)}
"""


class BusUnavailable(Exception):
    """Redis cannot be reached at the URL given (named, without its password)."""


class StaleAttempt(Exception):
    """An event from an attempt older than the one now publishing on the job: refused, not written."""


@dataclass(frozen=True)
class StreamSettings:
    # Events kept per job for Last-Event-ID replay: as many as the embedded bus keeps (config.py
    # replay_events). Trimming is approximate (MAXLEN ~): Redis drops whole nodes of 100 entries, so a
    # stream holds up to about 100 more, and costs far less than exact trimming.
    job_maxlen: int = 512
    # Every event of every job: enough for a client of /api/events away for a few seconds while
    # several devices stream steps.
    global_maxlen: int = 10_000
    # A job's stream stays this long after its terminal event (for late resumes and the history
    # page), then Redis drops it; replay then says "snapshot".
    job_ttl_s: float = 3600.0
    # Control messages kept per worker: a worker reads them within a second or two.
    control_maxlen: int = 1000


def job_key(job_id: str) -> str:
    return f"zimage:job:{job_id}"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


async def connect(url: str, *, timeout_s: float = 5.0, blocking_ms: int = 0) -> Redis:
    """A client for `url` (redis://host:port/db), checked with a PING, or BusUnavailable naming it.

    redis-py 8 cuts every read at socket_timeout (5 s by default), so a client that blocks in XREAD
    for `blocking_ms` gets that much more.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import RedisError

    try:
        client = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s + blocking_ms / 1000,
            # A blip (a failover, a restart) is retried twice within a second; past that the caller
            # hears of it (the reader marks a gap, a publish fails the way a lost store write does).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
    except ValueError as error:  # not a redis:// URL
        raise BusUnavailable(f"cannot use the Redis URL {redact(url)}: {error}") from error
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        await client.aclose()
        raise BusUnavailable(f"cannot reach Redis at {redact(url)}: {error}") from error
    return client


def entry_id(value: str) -> int:
    """The SSE id of a stream entry id (`n-0`)."""
    return int(value.split("-", 1)[0])


def decode(entry: Entry) -> Event:
    fields = entry[1]
    return Event(
        fields["k"],
        json.loads(fields["d"]),
        job_id=fields["j"] or None,
        seq=int(fields["s"]),
        gseq=int(fields["g"]),
    )


def _complete(found: Sequence[Entry], first: Sequence[Entry], after: int) -> bool:
    """Whether `found` (everything on a stream after `after`) lacks nothing: the first of it was
    added right after `after`, or the stream still reaches back to `after` (trimming only takes the
    oldest; an id missing in between was a superseded preview)."""
    if not found:
        return True
    return int(found[0][1]["p"]) == after or (bool(first) and entry_id(first[0][0]) <= after)


class RedisStreams:
    """Publishing and replaying events on Redis Streams; no local delivery (see redis_bus.py)."""

    def __init__(self, redis: Redis, settings: StreamSettings | None = None) -> None:
        self.redis = redis
        self.settings = settings or StreamSettings()
        self._script: AsyncScript = redis.register_script(PUBLISH)
        # The seq this process last gave each job it publishes on: the floor for the next one.
        self._seq: dict[str, int] = {}

    def open(self, job_id: str, first_id: int = 0) -> None:
        """Number the job's next events from `first_id` + 1 on at least (the stream's own newest id
        wins when higher); no round trip: a job's stream begins with its first event."""
        self._seq[job_id] = max(first_id, self._seq.get(job_id, 0))

    async def publish(self, job_id: str | None, kind: str, data: dict[str, Any], attempt: int = 1) -> Event:
        """Add an event to the job's stream and the global one (None: the global one only), atomically;
        the Event returned carries both ids. StaleAttempt if a newer attempt publishes on the job."""
        from redis.exceptions import ResponseError

        # "at": when the event was made (unix seconds), so a client can measure its delivery delay.
        data = {**data, "at": round(time.time(), 6)}
        terminal = kind in TERMINAL
        keys = [GLOBAL] if job_id is None else [GLOBAL, job_key(job_id), f"{job_key(job_id)}:preview"]
        args: list[str | int] = [
            kind,
            json.dumps(data, separators=(",", ":")),
            job_id or "",
            self._seq.get(job_id, 0) if job_id else 0,
            attempt,
            self.settings.job_maxlen,
            self.settings.global_maxlen,
            int(self.settings.job_ttl_s * 1000),
            int(terminal),
        ]
        try:
            seq, gseq = await self._script(keys=keys, args=args)
        except ResponseError as error:
            if "STALE" in str(error):
                raise StaleAttempt(str(error)) from error
            raise
        if job_id is not None:
            if terminal:
                self._seq.pop(job_id, None)
            else:
                self._seq[job_id] = int(seq)
        return Event(kind, data, job_id=job_id, seq=int(seq), gseq=int(gseq))

    async def last_id(self, job_id: str | None) -> int:
        """The id of the newest event on the topic (0 when it has none)."""
        newest = entries(await self.redis.xrevrange(_key(job_id), count=1))
        return entry_id(newest[0][0]) if newest else 0

    async def knows(self, job_id: str) -> bool:
        """Whether the job has a stream (it published, and has not expired or been forgotten)."""
        return bool(await self.redis.exists(job_key(job_id)))

    async def forget(self, job_id: str) -> None:
        await self.redis.delete(job_key(job_id), f"{job_key(job_id)}:preview")
        self._seq.pop(job_id, None)

    async def replay(self, job_id: str | None, after: int | None, upto: int | None = None) -> Replay:
        """The events after `after` on the topic, oldest first, or None when the stream no longer
        reaches back that far (trimmed, expired, lost in a Redis restart) or `after` is from the
        future: the caller sends a snapshot instead. `upto`: only events up to this global id (what
        a reader has delivered so far), so a replay and a live subscription never overlap."""
        if after is None:
            return None
        key = _key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrevrange(key, count=1)
            pipe.xrange(key, count=1)
            pipe.xrange(key, min=f"({after}-0")
            newest, first, after_it = (entries(raw) for raw in await pipe.execute())
        top = entry_id(newest[0][0]) if newest else 0
        if not newest:
            return [] if job_id is None and after == 0 else None
        if after > top:
            return None
        if not _complete(after_it, first, after):
            return None
        events = [decode(entry) for entry in after_it]
        return events if upto is None else [e for e in events if e.gseq <= upto]

    async def global_id(self, job_id: str, seq: int) -> int | None:
        """The global id of a job's event (None if the stream no longer has it)."""
        found = entries(await self.redis.xrange(job_key(job_id), min=f"{seq}-0", max=f"{seq}-0"))
        return int(found[0][1]["g"]) if found else None

    async def memory(self, job_id: str) -> int:
        """Bytes Redis holds for a job's own keys (its stream and preview ids; 0 once expired). Each
        event is also in the global stream until trimmed: `global_memory` / its length per event."""
        total = 0
        for key in (job_key(job_id), f"{job_key(job_id)}:preview"):
            used = await self.redis.memory_usage(key, samples=0)
            total += int(used or 0)
        return total

    async def global_memory(self) -> tuple[int, int]:
        """Bytes the global stream takes, and how many events it holds."""
        used = await self.redis.memory_usage(GLOBAL, samples=0)
        return int(used or 0), int(await self.redis.xlen(GLOBAL))


def _key(job_id: str | None) -> str:
    return GLOBAL if job_id is None else job_key(job_id)


def entries(raw: StreamRangeResponse | None) -> list[Entry]:
    """Stream entries as this module's clients return them: decode_responses gives str ids and fields,
    and XRANGE and XREAD never give the empty (None) entries that XCLAIM can."""
    return cast(list[Entry], raw or [])


def stream_entries(reply: XReadResponse | None, key: str) -> list[Entry]:
    """One stream's entries from an XREAD reply: redis-py 8 gives [[stream, entries], ...] with either
    protocol; a dict by stream is what its types also allow."""
    if not reply:
        return []
    if isinstance(reply, dict):
        found: Any = reply.get(key) or []
        return entries(found)
    for name, found in reply:
        if name == key:
            return entries(found)
    return []
