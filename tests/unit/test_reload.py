"""Hot reload on a fake clock: generations, pinned requests, kept cache layers, refusals."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import jwt
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu.config import ConfigError, parse_config
from yatagarasu.reload import ReloadReport, refuse_restart_changes
from yatagarasu.service import ProxyService
from yatagarasu.systemd import SystemdNotifier

START = 1_800_000_000.0
SECRET = "s" * 64
ADMIN_RULE = [{"claim": "role", "operator": "equals", "value": "admin"}]
OBJECT = {"Content-Type": "text/plain", "ETag": '"v1"', "Cache-Control": "max-age=600"}


def document(*buckets: dict[str, Any], cache_mb: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "server": {"port": 8080},
        "jwt": {"secret": SECRET, "admin_claims": ADMIN_RULE},
        "buckets": list(buckets) or [bucket_entry()],
    }
    if cache_mb is not None:
        memory = {"max_cache_size_mb": cache_mb, "max_item_size_mb": 1}
        doc["cache"] = {"enabled": True, "memory": memory}
    return doc


def harness(doc: dict[str, Any]) -> Harness:
    h = Harness(doc)
    h.clock.advance(START)
    return h


def token(**claims: Any) -> str:
    claims = {"sub": "ops", "exp": int(START) + 10**6, **claims}
    return "Authorization: Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")


def get(h: Harness, path: str, bucket: str = "pub", answer: bool = True) -> Any:
    before = len(h.agents[bucket].sent)
    _, transport = h.get(path)
    if answer and len(h.agents[bucket].sent) > before:
        h.agents[bucket].answer(FakeResponse(200, OBJECT, body=b"body of " + path.encode()))
    return parse_response(transport.value())


def admin_reload(h: Harness, *headers: str) -> Any:
    _, transport = h.get("/admin/reload", *headers, method="POST")
    return parse_response(transport.value())


def metric(h: Harness, line_start: str) -> float:
    text = h.assembly.metrics.render().decode()
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_reload_swaps_routes_added_answers_removed_is_404() -> None:
    h = harness(document())
    assert get(h, "/pub/a").status == 200
    report = h.reload(document(bucket_entry("other", "/other")))
    assert report.ok
    assert (report.generation, report.added, report.removed) == (2, ("other",), ("pub",))
    assert get(h, "/other/a", bucket="other").status == 200
    assert h.agents["other"].sent[-1].uri.endswith(b"/other-bucket/a")
    missing = get(h, "/pub/a", answer=False)
    assert (missing.status, json.loads(missing.body)["status"]) == (404, 404)


def test_changed_bucket_is_reported_and_its_new_settings_apply() -> None:
    h = harness(document())
    changed = bucket_entry(s3={"bucket": "renamed-bucket"})
    report = h.reload(document(changed))
    assert (report.added, report.removed, report.changed) == ((), (), ("pub",))
    get(h, "/pub/k")
    assert h.agents["pub"].sent[-1].uri.endswith(b"/renamed-bucket/k")


def test_in_flight_request_finishes_on_the_generation_it_started_with() -> None:
    h = harness(document())
    first = h.assembly
    _, transport = h.get("/pub/slow")
    assert len(h.agents["pub"].sent) == 1  # upstream asked, not answered yet
    report = h.reload(document(bucket_entry("other", "/other")))
    assert report.ok and h.assembly is not first
    assert h.reloader.retiring == 1  # generation 1 still has a request
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"old generation"))
    response = parse_response(transport.value())
    assert (response.status, response.body) == (200, b"old generation")
    h.clock.advance(0)
    assert h.reloader.retiring == 0  # retired with its last request


def test_lost_connection_releases_the_generation() -> None:
    h = harness(document())
    channel, _ = h.get("/pub/slow")
    h.reload(document(bucket_entry("other", "/other")))
    assert h.reloader.retiring == 1
    channel.connectionLost(Failure(ConnectionLost()))
    h.clock.advance(0)
    assert h.reloader.retiring == 0


def test_unchanged_cache_layer_keeps_its_entries() -> None:
    h = harness(document(cache_mb=4))
    layer = h.assembly.caching.cache.layers[0]
    assert get(h, "/pub/a").header("x-cache") == "MISS"
    assert get(h, "/pub/a").header("x-cache") == "HIT"
    hits = metric(h, 'yatagarasu_cache_hits_total{bucket="pub",layer="memory"}')
    report = h.reload(document(bucket_entry(), bucket_entry("other", "/other"), cache_mb=4))
    assert report.ok and report.added == ("other",)
    assert h.assembly.caching.cache.layers[0] is layer
    sent = len(h.agents["pub"].sent)
    assert get(h, "/pub/a").header("x-cache") == "HIT"
    assert len(h.agents["pub"].sent) == sent  # no upstream request
    assert metric(h, 'yatagarasu_cache_hits_total{bucket="pub",layer="memory"}') == hits + 1
    assert layer.stats(None).current_item_count == 1  # the old generation did not close it


def test_changed_cache_layer_is_rebuilt_and_the_old_one_closes_after_its_last_request() -> None:
    h = harness(document(cache_mb=4))
    old_layer = h.assembly.caching.cache.layers[0]
    get(h, "/pub/a")
    assert old_layer.stats(None).current_item_count == 1
    _, transport = h.get("/pub/slow")  # a miss in flight on generation 1
    assert h.reload(document(cache_mb=8)).ok
    new_layer = h.assembly.caching.cache.layers[0]
    assert new_layer is not old_layer
    assert get(h, "/pub/a").header("x-cache") == "MISS"  # a new, empty layer
    assert old_layer.stats(None).current_item_count == 1  # open while its request runs
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"late"), index=1)
    assert parse_response(transport.value()).body == b"late"
    h.clock.advance(0)  # the retirement runs on the next reactor turn
    assert old_layer.stats(None).current_item_count == 0  # closed (cleared) afterwards
    assert new_layer.stats(None).current_item_count == 1


def test_invalid_configuration_keeps_the_old_generation_and_is_counted() -> None:
    h = harness(document())
    bad = document(bucket_entry(), bucket_entry("two", "/two", bogus=1))
    report = h.reload(bad)
    assert report.status == 400
    assert report.message.startswith("buckets[1].bogus: unknown key")
    assert report.generation == 1 and h.reloader.generation == 1
    assert get(h, "/pub/a").status == 200
    assert metric(h, 'yatagarasu_config_reloads_total{result="error"}') == 1.0
    assert metric(h, 'yatagarasu_config_reloads_total{result="ok"}') == 0.0
    response = admin_reload(h, token(role="admin"))
    body = json.loads(response.body)
    assert (response.status, body["error"], body["status"]) == (400, "Bad Request", 400)
    assert body["message"].startswith("buckets[1].bogus: unknown key")
    assert body["request_id"] == response.header("x-request-id")
    assert metric(h, 'yatagarasu_config_reloads_total{result="error"}') == 2.0


def test_binding_the_workers_to_cpus_needs_a_restart() -> None:
    workers = document()
    workers["server"]["workers"] = 2
    bound = copy.deepcopy(workers)
    bound["server"]["worker_cpu_affinity"] = True
    old, new = parse_config(workers, {}), parse_config(bound, {})
    with pytest.raises(ConfigError) as info:
        refuse_restart_changes(old, new)
    assert str(info.value) == (
        "server.worker_cpu_affinity: changed from False to True; worker process changes need a"
        " restart"
    )
    refuse_restart_changes(new, parse_config(copy.deepcopy(bound), {}))  # unchanged: no error


def test_listener_change_is_refused() -> None:
    h = harness(document())
    moved = document()
    moved["server"]["port"] = 8081
    report = h.reload(moved)
    assert (report.status, report.generation) == (400, 1)
    assert report.message == (
        "server.port: changed from 8080 to 8081; listener changes need a restart"
    )
    elsewhere = document()
    elsewhere["server"]["address"] = "127.0.0.2"
    assert h.reload(elsewhere).message.startswith(
        "server.address: changed from 127.0.0.1 to 127.0.0.2"
    )
    backlog = document()
    backlog["server"]["listen_backlog"] = 128
    assert h.reload(backlog).message == (
        "server.listen_backlog: changed from 4096 to 128; listener changes need a restart"
    )
    workers = document()
    workers["server"]["workers"] = 2
    assert h.reload(workers).message == (
        "server.workers: changed from 1 to 2; worker process changes need a restart"
    )
    tls = document()
    tls["server"]["tls"] = {"cert_path": "/nonexistent/c.pem", "key_path": "/nonexistent/k.pem"}
    assert h.reload(tls).message == (
        "server.tls: changed from off to on; listener changes need a restart"
    )
    metrics = document()
    metrics["metrics"] = {"enabled": True, "port": 9091}
    assert h.reload(metrics).message.startswith(
        "metrics.port: the metrics listener changed from none to 127.0.0.1:9091"
    )
    assert metric(h, 'yatagarasu_config_reloads_total{result="error"}') == 6.0


def test_admin_reload_needs_admin_claims() -> None:
    h = harness(document())
    assert admin_reload(h).status == 401
    assert admin_reload(h, token(role="viewer")).status == 403
    assert h.reloader.generation == 1
    response = admin_reload(h, token(role="admin"))
    assert response.status == 200
    assert json.loads(response.body) == {
        "status": "success",
        "generation": 2,
        "buckets": {"added": [], "removed": [], "changed": []},
    }
    assert metric(h, "yatagarasu_config_generation") == 2.0
    assert metric(h, 'yatagarasu_config_reloads_total{result="ok"}') == 1.0


def test_admin_reload_announces_only_successes_from_the_admin_api() -> None:
    h = harness(document())
    heard: list[int] = []
    h.reloader.announce = lambda report: heard.append(report.generation)
    h.reload(document())  # a signal's reload is not announced
    assert admin_reload(h, token(role="admin")).status == 200
    h.document = document(bucket_entry(bogus=1))
    assert admin_reload(h, token(role="admin")).status == 400
    assert heard == [3]


def test_reload_during_a_drain_is_refused() -> None:
    h = harness(document())
    h.draining = True
    report = h.reload(document(bucket_entry("other", "/other")))
    assert (report.status, report.generation) == (409, 1)
    assert get(h, "/pub/a").status == 200


def test_request_counters_survive_a_reload() -> None:
    h = harness(document())
    get(h, "/pub/a")
    get(h, "/pub/b")
    series = 'yatagarasu_requests_total{bucket="pub",method="GET",status="200",status_class="2xx"}'
    assert metric(h, series) == 2.0
    h.reload(copy.deepcopy(document()))
    get(h, "/pub/c")
    assert metric(h, series) == 3.0


def uptime(h: Harness) -> int:
    _, transport = h.get("/health")
    return int(json.loads(parse_response(transport.value()).body)["uptime_seconds"])


def test_health_uptime_survives_a_reload() -> None:
    h = harness(document())
    h.clock.advance(100)
    before = uptime(h)
    h.reload(document(bucket_entry("other", "/other")))
    assert uptime(h) == before >= 100


def test_service_reload_swaps_what_the_listening_site_serves() -> None:
    h = harness(document())
    service = ProxyService(h.clock, h.assembly, reloader=h.reloader)
    assert service.site is h.site
    h.document = document(bucket_entry("other", "/other"))
    h.agents["other"] = h.agents["pub"]
    service.reload()
    assert service.assembly.config.buckets[0].name == "other"
    assert get(h, "/pub/a", answer=False).status == 404


def test_a_second_reload_while_one_runs_is_refused_with_409() -> None:
    h = harness(document())
    gate: Deferred[None] = Deferred()
    real = h.reloader._reload

    async def held() -> ReloadReport:
        await gate
        return await real()

    h.reloader._reload = held  # type: ignore[method-assign]
    first = Deferred.fromCoroutine(h.reloader.reload())
    response = admin_reload(h, token(role="admin"))
    assert (response.status, json.loads(response.body)["message"]) == (
        409,
        "reload refused: another reload is in progress",
    )
    gate.callback(None)
    assert first.called and h.reloader.generation == 2


def test_systemd_hears_reloading_then_ready(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    notifier = SystemdNotifier(path)
    try:
        h = harness(document())
        h.reloader.notifier = notifier
        h.reloader._clock_usec = lambda: 1234
        assert h.reload(document(bucket_entry(), bucket_entry("two", "/two"))).ok
        assert not h.reload(document(bucket_entry(bogus=1))).ok
        messages = [receiver.recv(4096).decode() for _ in range(4)]
    finally:
        notifier.close()
        receiver.close()
    assert messages == [
        "RELOADING=1\nMONOTONIC_USEC=1234\nSTATUS=reloading the configuration\n",
        "READY=1\nSTATUS=serving 2 bucket(s), generation 2\n",
        "RELOADING=1\nMONOTONIC_USEC=1234\nSTATUS=reloading the configuration\n",
        "READY=1\nSTATUS=serving 2 bucket(s), generation 2 (last reload failed:"
        " buckets[0].bogus: unknown key)\n",
    ]


def test_turning_the_cache_off_stops_exporting_the_old_layers() -> None:
    h = harness(document(cache_mb=4))
    get(h, "/pub/a")
    assert metric(h, 'yatagarasu_cache_items{layer="memory"}') == 1.0
    assert h.reload(document()).ok
    assert h.assembly.caching.cache is None
    assert "yatagarasu_cache_items{" not in h.assembly.metrics.render().decode()
    assert get(h, "/pub/a").header("x-cache") is None
