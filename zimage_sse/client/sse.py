"""The SSE wire format, client side: lines in, messages out.

Pure: no I/O, so the terminal client, the tests and the benchmarks read streams with the same parser.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Lines in, messages out, per WHATWG HTML "Interpreting an event stream" (§9.2.6).

    A message is dispatched only at the blank line that ends it, so one cut off by a dropped
    connection never reaches the caller; the caller resumes from the last id instead.
    """

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Message | None:
        if line == "":
            message = None
            if self._data:
                message = Message(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None
