"""
The control channel between the parent and one worker: JSON objects, one per line, over a pair
of pipes. Every message has an ``op``; what each side sends:

- worker → parent: ``up`` (listening), ``reload`` (tell the others), ``gather`` (ask everyone
  a ``topic``: ``metrics``, ``stats``, ``purge``), ``answer`` (to an ``ask``);
- parent → worker: ``workers`` (which are up), ``ask``, ``gathered`` (the answers to this
  worker's ``gather``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

#: a ``/metrics`` text of a worker is tens of KiB; far below this
MAX_LINE_BYTES = 16 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """:returns: ``message`` as one line of JSON (without the delimiter)."""
    return json.dumps(message, separators=(",", ":")).encode()


class ControlProtocol(LineOnlyReceiver):
    """
    Reads messages and hands each to ``handler``; :meth:`send` writes one.

    :param handler: called with every message received (a dict with an ``op``).
    :param lost: called once when the other side has gone.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(
        self, handler: Callable[[dict[str, Any]], None], lost: Callable[[], None] = lambda: None
    ) -> None:
        self._handler = handler
        self._lost = lost

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict) or not isinstance(message.get("op"), str):
                raise ValueError("not an object with an op")
        except ValueError as e:
            log.warn("ignoring a malformed control message: {error}", error=str(e))
            return
        self._handler(message)

    def send(self, message: dict[str, Any]) -> None:
        """:param message: a JSON object with an ``op``."""
        if self.transport is not None:
            self.sendLine(encode(message))

    def connectionLost(self, reason: Any = None) -> None:
        self._lost()
