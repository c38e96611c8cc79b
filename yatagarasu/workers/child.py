"""
The worker's side of the control channel: :class:`WorkerChannel` is the
:class:`~yatagarasu.interfaces.ISiblings` of a worker process. It tells the parent when this
worker is up, passes purges and reloads on to the siblings, answers the parent's questions
(``metrics``, ``stats``) and gathers everyone's answers for ``/metrics`` and the stats route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from yatagarasu.interfaces import ISiblings
from yatagarasu.workers.control import ControlProtocol

log = Logger()

#: seconds a worker waits for the parent's ``gathered`` before answering with its own part
GATHER_TIMEOUT_SECONDS = 5.0

PurgeCallback = Callable[[str | None, str | None, str | None], object]


@implementer(ISiblings)
class WorkerChannel:
    """
    :param clock: for the gather timeout.
    :param worker_id: this worker's number.
    :param workers: how many workers the instance runs.
    :param parent_gone: called once when the control channel closes (the parent exited).
    """

    def __init__(
        self,
        clock: IReactorTime,
        worker_id: int,
        workers: int,
        parent_gone: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self.worker_id = worker_id
        self.workers = workers
        #: called once when the control channel closes (the service sets it: stop the reactor)
        self.parent_gone = parent_gone
        self.protocol = ControlProtocol(self._received, self._lost)
        self._answerers: dict[str, Callable[[Any], Any]] = {}
        self._on_purge: PurgeCallback | None = None
        self._up: frozenset[int] = frozenset()
        self._pending: dict[int, Deferred[dict[int, Any]]] = {}
        self._next_id = 0
        self._connected = False

    # -- wiring (the assembly) -------------------------------------------------------------

    def serve(self, topic: str, answerer: Callable[[Any], Any]) -> None:
        """
        :param topic: a :meth:`gather` topic.
        :param answerer: this worker's answer for an argument (a JSON value in, out).
        """
        self._answerers[topic] = answerer

    def receive_purges(self, callback: PurgeCallback) -> None:
        """:param callback: ``(bucket, prefix, key)`` of each purge a sibling made."""
        self._on_purge = callback

        def apply(argument: Any) -> bool:
            origin, bucket, prefix, key = argument
            if origin != self.worker_id:  # the worker that purged has done it already
                callback(bucket, prefix, key)
            return True

        self._answerers["purge"] = apply

    @property
    def relays_purges(self) -> bool:
        """Whether sibling purges are delivered here (``False``: Redis broadcasts them)."""
        return self._on_purge is not None

    def connected(self) -> None:
        """The protocol's transport is set up (see :meth:`ControlProtocol.makeConnection`)."""
        self._connected = True

    def announce_up(self) -> None:
        """This worker listens: tell the parent."""
        self.protocol.send({"op": "up", "worker": self.worker_id})

    # -- ISiblings -------------------------------------------------------------------------

    def announce_purge(
        self, bucket: str | None, prefix: str | None, key: str | None
    ) -> Deferred[None]:
        # A gather: it fires once every running sibling has applied the purge (or the gather
        # timed out), so the purge is answered only when no worker still serves the entry.
        if self._on_purge is None:
            return succeed(None)
        asked = self.gather("purge", [self.worker_id, bucket, prefix, key])
        return asked.addCallback(lambda _answers: None)

    def announce_reload(self) -> None:
        self.protocol.send({"op": "reload", "worker": self.worker_id})

    def all_up(self) -> bool:
        return len(self._up) >= self.workers

    def gather(self, topic: str, argument: Any) -> Deferred[dict[int, Any]]:
        own = {self.worker_id: self._answer(topic, argument)}
        if not self._connected:
            return _fired(own)
        self._next_id += 1
        request_id = self._next_id
        waiting: Deferred[dict[int, Any]] = Deferred()
        self._pending[request_id] = waiting

        def timed_out(failure: Any) -> dict[int, Any]:
            failure.trap(TimeoutError)
            self._pending.pop(request_id, None)
            log.warn(
                "no answer from the parent to {topic} in {timeout:g}s: answering for this"
                " worker only",
                topic=topic,
                timeout=GATHER_TIMEOUT_SECONDS,
            )
            return own

        waiting.addTimeout(GATHER_TIMEOUT_SECONDS, self._clock)
        waiting.addErrback(timed_out)
        self.protocol.send({"op": "gather", "id": request_id, "topic": topic, "argument": argument})
        return waiting

    # -- messages from the parent ----------------------------------------------------------

    def _answer(self, topic: str, argument: Any) -> Any:
        answerer = self._answerers.get(topic)
        return answerer(argument) if answerer is not None else None

    def _received(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "workers":
            self._up = frozenset(int(w) for w in message.get("up", ()))
        elif op == "ask":
            body = self._answer(str(message.get("topic")), message.get("argument"))
            self.protocol.send({"op": "answer", "id": message.get("id"), "body": body})
        elif op == "gathered":
            waiting = self._pending.pop(int(message.get("id", -1)), None)
            if waiting is not None:
                parts = message.get("parts") or {}
                waiting.callback({int(worker): body for worker, body in parts.items()})
        else:
            log.warn("ignoring control message {op!r} from the parent", op=op)

    def _lost(self) -> None:
        if self._connected:
            self._connected = False
            self.parent_gone()


def _fired(value: dict[int, Any]) -> Deferred[dict[int, Any]]:
    done: Deferred[dict[int, Any]] = Deferred()
    done.callback(value)
    return done
