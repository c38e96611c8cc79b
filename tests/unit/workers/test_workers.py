"""The parent's supervisor (fake processes on a fake clock), the worker's control channel, and
what a worker answers for the whole instance (metrics merge, stats sum, /ready, purge relay)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.unit.fakes import Harness, bucket_entry, parse_response
from yatagarasu.config import ConfigError, parse_config
from yatagarasu.interfaces import ISiblings
from yatagarasu.metrics import Metrics, merge_expositions
from yatagarasu.systemd import SystemdNotifier
from yatagarasu.web.admin_cache import cache_admin_routes
from yatagarasu.workers.child import GATHER_TIMEOUT_SECONDS, WorkerChannel
from yatagarasu.workers.control import encode
from yatagarasu.workers.sockets import accept_one_at_a_time
from yatagarasu.workers.supervisor import (
    ANSWER_TIMEOUT_SECONDS,
    KILL_MARGIN_SECONDS,
    Backoff,
    Supervisor,
    worker_command,
)

BUCKETS = {"buckets": [bucket_entry()]}


# -- fakes ----------------------------------------------------------------------------------


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.closed = True


class FakeProcess:
    """What a ProcessProtocol's transport is: records signals and what is written to the child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written: dict[int, bytes] = {}

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written[fd] = self.written.get(fd, b"") + data

    def closeChildFD(self, fd: int) -> None:
        pass

    def messages(self) -> list[dict[str, Any]]:
        data = b"".join(self.written.values())
        return [json.loads(line) for line in data.splitlines()]


class Spawner:
    def __init__(self) -> None:
        self.spawned: list[tuple[ProcessProtocol, list[str], dict[str, str], dict[int, Any]]] = []
        self.processes: list[FakeProcess] = []

    def __call__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str],
        fds: dict[int, Any],
    ) -> FakeProcess:
        process = FakeProcess(1000 + len(self.processes))
        self.processes.append(process)
        self.spawned.append((protocol, args, env, fds))
        protocol.makeConnection(process)  # type: ignore[arg-type]
        return process


class RecordingNotifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append(assignments)
        return True


def supervisor(
    workers: int = 3,
    *,
    grace: float = 10.0,
    bind: Callable[[str, int], FakeSocket] | None = None,
    notifier: SystemdNotifier | None = None,
) -> tuple[Supervisor, Clock, Spawner]:
    config = parse_config(
        {"server": {"workers": workers, "shutdown_grace_seconds": grace}, **BUCKETS}, {}
    )
    clock = Clock()
    spawn = Spawner()
    fds = iter(range(40, 50))
    result = Supervisor(
        clock,
        config,
        [("proxy", "127.0.0.1", 8080)],
        lambda worker, fds: ["worker", str(worker), *map(str, fds)],
        spawn,
        bind or (lambda host, port: FakeSocket(next(fds))),
        notifier,
        environ={"PATH": "/bin", "NOTIFY_SOCKET": "/run/notify", "LISTEN_FDS": "1"},
    )
    result.privilegedStartService()
    result.startService()
    return result, clock, spawn


def current(sup: Supervisor, worker: int) -> tuple[Any, FakeProcess]:
    protocol = sup.workers[worker]
    return protocol, protocol.transport  # type: ignore[return-value]


def crash(sup: Supervisor, worker: int, signal: int | None = 9) -> None:
    protocol, _ = current(sup, worker)
    reason = ProcessTerminated(None, signal) if signal else ProcessDone(0)
    protocol.processEnded(Failure(reason))


def tell(sup: Supervisor, worker: int, message: dict[str, Any]) -> None:
    protocol, _ = current(sup, worker)
    protocol.childDataReceived(5, encode(message) + b"\n")


# -- supervisor -----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=30.0, reset_after=60.0)
    assert [backoff.delay(0.5) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(60.0) == 1.0
    assert backoff.delay(1.0) == 2.0


def test_workers_get_the_sockets_their_pipes_and_no_systemd_variables() -> None:
    _, _, spawn = supervisor(2)
    assert len(spawn.spawned) == 2
    _, args, env, fds = spawn.spawned[1]
    assert fds == {0: 0, 1: 1, 2: 2, 3: 40, 4: "w", 5: "r"}
    assert args == ["worker", "1", "3", "4", "5"]
    assert env == {"PATH": "/bin"}


def test_worker_command_runs_twistd_in_worker_mode() -> None:
    argv = worker_command("etc/x.yaml", 2, [3, 4, 5])
    assert argv[3:6] == ["--nodaemon", "--pidfile=", "yatagarasu"]
    assert argv[-4:] == ["--worker", "2", "--worker-fds", "3,4,5"]
    assert argv[7].endswith("/etc/x.yaml") and argv[7].startswith("/")


def test_a_crashed_worker_is_restarted_with_backoff() -> None:
    sup, clock, spawn = supervisor(2)
    crash(sup, 1)
    assert 1 not in sup.workers
    clock.advance(0.99)
    assert len(spawn.spawned) == 2
    clock.advance(0.01)
    assert len(spawn.spawned) == 3 and sup.workers[1].transport is spawn.processes[2]
    crash(sup, 1)  # again at once: twice as long
    clock.advance(1.99)
    assert 1 not in sup.workers
    clock.advance(0.01)
    assert 1 in sup.workers
    clock.advance(60.0)  # ran a minute: the next delay is back to 1 s
    crash(sup, 1)
    clock.advance(1.0)
    assert 1 in sup.workers and len(spawn.spawned) == 5
    assert 0 in sup.workers and spawn.processes[0].signals == []


def up(sup: Supervisor, *workers: int) -> None:
    for worker in workers:
        tell(sup, worker, {"op": "up", "worker": worker})


def test_sighup_is_passed_to_every_worker_once_it_is_up() -> None:
    sup, _, spawn = supervisor(3)
    up(sup, 0, 1)
    assert sup.pass_signal("HUP") == 2
    assert [p.signals for p in spawn.processes] == [["HUP"], ["HUP"], []]
    up(sup, 2)  # it was starting: no handler yet, so it gets its SIGHUP now
    assert [p.signals for p in spawn.processes] == [["HUP"], ["HUP"], ["HUP"]]


def test_sigterm_reaches_every_worker_and_stop_waits_for_all_of_them() -> None:
    sup, clock, spawn = supervisor(2)
    sockets = list(sup.sockets)
    stopped = sup.stopService()
    assert [p.signals for p in spawn.processes] == [["TERM"], ["TERM"]]
    assert all(sock.closed for sock in sockets)  # type: ignore[attr-defined]
    crash(sup, 0, signal=None)
    assert not stopped.called
    crash(sup, 1, signal=None)
    assert stopped.called
    clock.advance(100.0)
    assert len(spawn.spawned) == 2  # no restart while stopping


def test_a_worker_still_running_after_the_grace_period_is_killed() -> None:
    sup, clock, spawn = supervisor(2, grace=10.0)
    stopped = sup.stopService()
    crash(sup, 0, signal=None)
    clock.advance(10.0 + KILL_MARGIN_SECONDS - 0.1)
    assert spawn.processes[1].signals == ["TERM"]
    clock.advance(0.1)
    assert spawn.processes[1].signals == ["TERM", "KILL"]
    assert not stopped.called
    crash(sup, 1, signal=9)
    assert stopped.called
    assert spawn.processes[0].signals == ["TERM"]


def test_port_in_use_stops_before_any_worker() -> None:
    def bind(host: str, port: int) -> FakeSocket:
        raise CannotListenError(host, port, OSError(98, "Address already in use"))

    with pytest.raises(SystemExit) as info:
        supervisor(2, bind=bind)
    assert info.value.code == 1


def test_a_reload_on_one_worker_sighups_the_others() -> None:
    sup, _, spawn = supervisor(3)
    up(sup, 0, 1, 2)
    tell(sup, 2, {"op": "reload", "worker": 2})
    assert [p.signals for p in spawn.processes] == [["HUP"], ["HUP"], []]


def test_ready_once_every_worker_is_up_and_the_workers_know_who_is() -> None:
    notifier = RecordingNotifier()
    sup, _, spawn = supervisor(2, notifier=notifier)
    tell(sup, 0, {"op": "up", "worker": 0})
    assert not any("READY=1" in sent for sent in notifier.sent)
    tell(sup, 1, {"op": "up", "worker": 1})
    assert sum("READY=1" in sent for sent in notifier.sent) == 1
    assert spawn.processes[0].messages()[-1] == {"op": "workers", "up": [0, 1]}
    crash(sup, 1)
    assert spawn.processes[0].messages()[-1] == {"op": "workers", "up": [0]}
    assert notifier.sent[-1] == ("STATUS=1 of 2 workers up",)


def test_gather_collects_every_up_worker_and_times_out_on_a_silent_one() -> None:
    sup, clock, spawn = supervisor(3)
    for worker in range(3):
        tell(sup, worker, {"op": "up", "worker": worker})
    tell(sup, 0, {"op": "gather", "id": 7, "topic": "metrics", "argument": None})
    asks = [[m for m in p.messages() if m["op"] == "ask"] for p in spawn.processes]
    assert all(len(a) == 1 and a[0]["topic"] == "metrics" for a in asks)
    ask_id = asks[0][0]["id"]
    tell(sup, 0, {"op": "answer", "id": ask_id, "body": "zero"})
    tell(sup, 2, {"op": "answer", "id": ask_id, "body": "two"})
    assert not [m for m in spawn.processes[0].messages() if m["op"] == "gathered"]
    clock.advance(ANSWER_TIMEOUT_SECONDS)
    gathered = [m for m in spawn.processes[0].messages() if m["op"] == "gathered"]
    assert gathered == [{"op": "gathered", "id": 7, "parts": {"0": "zero", "2": "two"}}]


def test_gather_ends_early_when_a_silent_worker_exits() -> None:
    sup, _, spawn = supervisor(2)
    for worker in range(2):
        tell(sup, worker, {"op": "up", "worker": worker})
    tell(sup, 1, {"op": "gather", "id": 1, "topic": "stats", "argument": "pub"})
    ask_id = spawn.processes[1].messages()[-1]["id"]
    tell(sup, 1, {"op": "answer", "id": ask_id, "body": {"hits": 1}})
    crash(sup, 0)
    gathered = [m for m in spawn.processes[1].messages() if m["op"] == "gathered"]
    assert gathered == [{"op": "gathered", "id": 1, "parts": {"1": {"hits": 1}}}]


# -- the worker's channel -------------------------------------------------------------------


def channel(worker: int = 0, workers: int = 2) -> tuple[WorkerChannel, StringTransport, Clock]:
    clock = Clock()
    ch = WorkerChannel(clock, worker, workers)
    transport = StringTransport()
    ch.protocol.makeConnection(transport)
    ch.connected()
    return ch, transport, clock


def sent(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


def receive(ch: WorkerChannel, message: dict[str, Any]) -> None:
    ch.protocol.dataReceived(encode(message) + b"\n")


def test_channel_gathers_through_the_parent() -> None:
    ch, transport, _ = channel(1)
    ch.serve("metrics", lambda argument: f"mine {argument}")
    result = ch.gather("metrics", "x")
    assert sent(transport) == [{"op": "gather", "id": 1, "topic": "metrics", "argument": "x"}]
    receive(ch, {"op": "gathered", "id": 1, "parts": {"0": "theirs", "1": "mine x"}})
    assert result.result == {0: "theirs", 1: "mine x"}


def test_channel_answers_for_itself_when_the_parent_is_silent() -> None:
    ch, _, clock = channel(1)
    ch.serve("metrics", lambda argument: "mine")
    result = ch.gather("metrics", None)
    clock.advance(GATHER_TIMEOUT_SECONDS)
    assert result.result == {1: "mine"}


def test_channel_answers_the_parents_questions() -> None:
    ch, transport, _ = channel()
    ch.serve("stats", lambda bucket: {"bucket": bucket})
    receive(ch, {"op": "ask", "id": 5, "topic": "stats", "argument": "pub"})
    assert sent(transport) == [{"op": "answer", "id": 5, "body": {"bucket": "pub"}}]


def test_channel_purges_and_readiness() -> None:
    ch, transport, _ = channel(0, 2)
    ch.announce_purge("pub", None, "a")  # no relay asked for (Redis does it): nothing sent
    assert transport.value() == b""
    purges: list[tuple[Any, ...]] = []
    ch.receive_purges(lambda *purge: purges.append(purge))
    done: list[object] = []
    ch.announce_purge("pub", None, "a").addCallback(done.append)
    # A gather of every worker: the purge is answered once the siblings have applied it.
    [asked] = sent(transport)
    assert (asked["op"], asked["topic"], asked["argument"]) == (
        "gather",
        "purge",
        [0, "pub", None, "a"],
    )
    assert purges == [] and done == []  # this worker purged already; the siblings not yet
    receive(ch, {"op": "gathered", "id": asked["id"], "parts": {"0": True, "1": True}})
    assert done == [None]
    # A sibling's purge, asked by the parent, is applied here and acknowledged.
    receive(ch, {"op": "ask", "id": 7, "topic": "purge", "argument": [1, None, None, None]})
    assert purges == [(None, None, None)]
    assert sent(transport)[-1] == {"op": "answer", "id": 7, "body": True}
    assert not ch.all_up()
    receive(ch, {"op": "workers", "up": [0, 1]})
    assert ch.all_up()


def test_channel_tells_when_the_parent_has_gone() -> None:
    gone: list[bool] = []
    ch, transport, _ = channel()
    ch.parent_gone = lambda: gone.append(True)
    ch.protocol.connectionLost(None)
    assert gone == [True]
    ch.announce_reload()
    assert sent(transport) == [{"op": "reload", "worker": 0}]


# -- what a worker answers for the instance -------------------------------------------------


@implementer(ISiblings)
class FakeSiblings:
    """Two workers: this one (0) and a sibling whose answers the test gives."""

    worker_id = 0
    workers = 2

    def __init__(self, sibling: Callable[[str, Any], Any]) -> None:
        self.answerers: dict[str, Callable[[Any], Any]] = {}
        self.sibling = sibling
        self.purge_callback: Callable[..., object] | None = None
        self.announced: list[tuple[Any, ...]] = []
        self.up = True

    def serve(self, topic: str, answerer: Callable[[Any], Any]) -> None:
        self.answerers[topic] = answerer

    def receive_purges(self, callback: Callable[..., object]) -> None:
        self.purge_callback = callback

    def announce_purge(
        self, bucket: str | None, prefix: str | None, key: str | None
    ) -> Deferred[None]:
        self.announced.append((bucket, prefix, key))
        return succeed(None)

    def announce_reload(self) -> None:
        pass

    def all_up(self) -> bool:
        return self.up

    def gather(self, topic: str, argument: Any) -> Deferred[dict[int, Any]]:
        return succeed({0: self.answerers[topic](argument), 1: self.sibling(topic, argument)})


def test_merged_metrics_label_every_sample_with_its_worker() -> None:
    first, second = Metrics(), Metrics()
    first.request("pub", b"GET", 200, 0.01, 10)
    second.request("pub", b"GET", 200, 0.01, 10)
    second.request("pub", b"GET", 200, 0.02, 10)
    text = merge_expositions({0: first.render().decode(), 1: second.render().decode()}).decode()
    series = 'yatagarasu_requests_total{bucket="pub",method="GET",status="200",status_class="2xx"'
    assert f'{series},worker="0"}} 1.0' in text
    assert f'{series},worker="1"}} 2.0' in text
    assert text.count("# TYPE yatagarasu_requests_total counter") == 1
    durations = 'yatagarasu_request_duration_seconds_count{bucket="pub",cache="none"'
    assert f'{durations},worker="1"}} 2.0' in text


def cached_document() -> dict[str, Any]:
    return {
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}},
        **BUCKETS,
    }


def test_metrics_route_answers_for_every_worker() -> None:
    other = Metrics()
    other.request("pub", b"GET", 404, 0.01, 0)
    siblings = FakeSiblings(lambda topic, argument: other.render().decode())
    h = Harness(cached_document(), siblings=siblings)
    _, transport = h.get("/metrics")
    response = parse_response(transport.value())
    text = response.body.decode()
    assert response.status == 200
    assert response.header("x-yatagarasu-worker") == "0"
    assert 'status="404",status_class="4xx",worker="1"} 1.0' in text
    own = 'yatagarasu_requests_total{bucket="-",method="GET",status="200",status_class="2xx"'
    assert f'{own},worker="0"}}' not in text


def test_stats_are_summed_over_the_workers() -> None:
    sibling_stats = {
        "hits": 3,
        "misses": 1,
        "hit_rate": 0.75,
        "current_item_count": 2,
        "layers": {"memory": {"hits": 3, "misses": 1, "current_item_count": 2}},
        "buckets": {"pub": {"hits": 3, "misses": 1, "current_item_count": 2}},
    }
    siblings = FakeSiblings(lambda topic, argument: sibling_stats)
    h = Harness(cached_document(), siblings=siblings)
    assert h.assembly.caching.cache is not None
    routes = cache_admin_routes(h.assembly.caching, h.config, siblings)
    result = routes[(b"GET", "cache")](None, ["stats"])  # type: ignore[arg-type]
    status, document = Deferred.fromCoroutine(result).result  # type: ignore[arg-type]
    data = document["data"]
    assert status == 200
    assert (data["hits"], data["misses"], data["current_item_count"]) == (3, 1, 2)
    assert data["hit_rate"] == 0.75
    assert data["layers"]["memory"]["hits"] == 3
    assert data["workers"] == {"answered": [0, 1], "of": 2}


def test_a_purge_is_announced_and_a_siblings_purge_applied() -> None:
    siblings = FakeSiblings(lambda topic, argument: None)
    h = Harness(cached_document(), siblings=siblings)
    cache = h.assembly.caching.cache
    assert cache is not None and siblings.purge_callback == cache.on_remote_purge
    routes = cache_admin_routes(h.assembly.caching, h.config, siblings)
    request: Any = type("Request", (), {"args": {b"prefix": [b"img/"]}})()
    result = routes[(b"POST", "cache")](request, ["purge", "pub"])
    status, _ = Deferred.fromCoroutine(result).result  # type: ignore[arg-type]
    assert status == 200
    assert siblings.announced[-1] == ("pub", "img/", None)


def test_ready_is_503_while_a_worker_is_down() -> None:
    siblings = FakeSiblings(lambda topic, argument: None)
    h = Harness(cached_document(), siblings=siblings)
    siblings.up = False
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    assert (response.status, json.loads(response.body)["status"]) == (503, "workers_down")
    siblings.up = True
    _, transport = h.get("/ready")
    assert parse_response(transport.value()).status == 200


def test_a_single_process_adds_no_worker_header() -> None:
    h = Harness(cached_document())
    _, transport = h.get("/health")
    assert parse_response(transport.value()).header("x-yatagarasu-worker") is None


@pytest.mark.parametrize("workers", [0, 65, -1])
def test_workers_out_of_range_are_rejected(workers: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"workers": workers}, **BUCKETS}, {})
    assert "server.workers" in str(info.value)


def test_workers_in_range_are_accepted() -> None:
    assert parse_config({"server": {"workers": 4}, **BUCKETS}, {}).server.workers == 4


def test_an_adopted_port_accepts_one_connection_per_wake_up() -> None:
    class Port:
        numberAccepts = 100
        seen: ClassVar[list[int]] = []

        def doRead(self) -> None:
            self.seen.append(self.numberAccepts)
            self.numberAccepts += 20  # what Twisted does after a full batch

    port = Port()
    accept_one_at_a_time(port)
    port.doRead()
    port.doRead()
    assert port.seen == [1, 1]
