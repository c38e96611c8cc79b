"""
``server.workers: 2`` through the real twistd: a parent that binds the port and two worker
processes that adopt it (moto with SigV4 on, the test's own redis-server).

Which worker answered is read from the ``X-Yatagarasu-Worker`` response header; their process
ids from the parent's log ("worker N started (pid P)"). Every request is on a new connection,
so the kernel hands it to whichever worker accepts first: loops that need both workers are
bounded in count and time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest

from devharness.http_client import HttpResponse, http_request
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import bucket_config
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess, check_config, clean_exit, run_twistd
from devharness.waiting import wait_until
from tests.integration.test_cache_twistd import MEMORY, admin, config, redis_cache
from tests.integration.test_drain_twistd import RawDownload
from tests.integration.test_reload_twistd import rewrite

WORKERS = 2
#: new connections tried before concluding that a worker never answers (a busy machine can
#: keep one worker off the CPU for a few hundred of them)
ATTEMPTS = 1600
#: new connections opened at once (:func:`_from_every_worker`)
BURST = 32


def _workers(document: dict[str, Any], **server: Any) -> dict[str, Any]:
    document["server"] = {"workers": WORKERS, **server}
    return document


def _worker(response: HttpResponse) -> int:
    value = response.header("X-Yatagarasu-Worker")
    assert value is not None, response.headers
    return int(value)


def _from_every_worker(
    running: ProxyProcess, path: str, accept: Callable[[HttpResponse], bool] = lambda r: True
) -> dict[int, list[HttpResponse]]:
    """
    GET ``path`` on new connections until every worker has answered once with a response
    ``accept`` takes; every response is kept, by worker.

    The GETs go in bursts of :data:`BURST` at once: one at a time, on an idle machine, the
    same worker can win every accept (both are woken; the kernel does not take turns).
    """
    seen: dict[int, list[HttpResponse]] = {}
    accepted: set[int] = set()
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        for _ in range(ATTEMPTS // BURST):
            for response in pool.map(lambda _: running.get(path), range(BURST)):
                worker = _worker(response)
                seen.setdefault(worker, []).append(response)
                if accept(response):
                    accepted.add(worker)
            if len(accepted) == WORKERS:
                return seen
    raise AssertionError(f"only workers {sorted(accepted)} answered {path} in {ATTEMPTS} tries")


def _pids(running: ProxyProcess) -> dict[int, int]:
    """:returns: the latest pid of each worker, from the parent's log."""
    found = re.findall(r"worker (\d+) started \(pid (\d+)\)", running.log_text())
    return {int(worker): int(pid) for worker, pid in found}


def _wait_all_up(running: ProxyProcess) -> None:
    """Wait until ``/ready`` is 200: every worker is up (it is 503 ``workers_down`` before)."""
    wait_until(lambda: running.get("/ready").status == 200, timeout=20, what="every worker up")


def _thread_masks(pid: int) -> set[frozenset[int]]:
    """:returns: the CPU masks of the process's threads (those that still run)."""
    masks = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            masks.add(frozenset(os.sched_getaffinity(int(tid))))
    return masks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_serve_and_metrics_count_both(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"hello", CacheControl="max-age=600")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY)))
    _wait_all_up(running)
    pids = _pids(running)
    assert len(set(pids.values())) == WORKERS and running.pid not in pids.values()
    seen = _from_every_worker(running, "/pub/a.txt")
    assert all(r.status == 200 and r.body == b"hello" for rs in seen.values() for r in rs)
    metrics = running.get("/metrics")
    assert metrics.status == 200
    for worker, responses in seen.items():
        line = (
            f'yatagarasu_requests_total{{bucket="pub",method="GET",status="200",status_class="2xx",'
            f'worker="{worker}"}} {float(len(responses))}'
        )
        assert line in metrics.body.decode(), line
    stats = running.get("/admin/cache/stats", headers=admin()).json()["data"]
    assert stats["workers"] == {"answered": [0, 1], "of": WORKERS}
    assert stats["hits"] + stats["misses"] == sum(len(rs) for rs in seen.values())
    assert stats["current_item_count"] == WORKERS  # each worker's memory holds its copy
    ready = running.get("/ready")
    assert (ready.status, ready.json()["status"]) == (200, "ready")

    def logged(worker: int) -> bool:  # access lines carry the worker number (within 1 s)
        pattern = rf"yatagarasu\.access#info worker {worker}\] .* GET /pub/a\.txt 200"
        return re.search(pattern, running.log_text()) is not None

    for worker in range(WORKERS):
        wait_until(partial(logged, worker), timeout=10, what=f"worker {worker}'s access line")


def test_two_workers_serve_the_admin_api_on_the_metrics_listener(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"hello", CacheControl="max-age=600")
    metrics_port = free_port()
    document = _workers(config(moto_s3, s3_bucket, MEMORY))
    document["metrics"] = {"port": metrics_port, "serve_admin": True}
    running = proxy(document)
    _wait_all_up(running)
    seen = _from_every_worker(running, "/pub/a.txt")
    assert running.get("/admin/cache/stats", headers=admin()).status == 404
    url = f"http://{LOOPBACK}:{metrics_port}"
    stats = http_request("GET", url + "/admin/cache/stats", headers=admin(), timeout=10)
    assert stats.status == 200, stats.body
    data = stats.json()["data"]
    assert data["workers"] == {"answered": [0, 1], "of": WORKERS}
    assert data["hits"] + data["misses"] == sum(len(rs) for rs in seen.values())
    scraped = http_request("GET", url + "/metrics", timeout=10).body.decode()
    for worker, responses in seen.items():
        series = 'bucket="pub",method="GET",status="200",status_class="2xx"'
        line = f'yatagarasu_requests_total{{{series},worker="{worker}"}} {float(len(responses))}'
        assert line in scraped, line


def test_a_killed_worker_is_restarted_and_requests_keep_succeeding(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"hello")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY)))
    _wait_all_up(running)
    old = _pids(running)[1]
    os.kill(old, signal.SIGKILL)
    statuses = [running.get("/pub/a.txt").status for _ in range(50)]
    assert statuses == [200] * 50
    running.wait_for_log("worker 1 exited (signal 9)")
    wait_until(lambda: _pids(running)[1] != old, timeout=20, what="worker 1 to be restarted")
    new = _pids(running)[1]
    assert _alive(new) and not _alive(old)
    _wait_all_up(running)
    seen = _from_every_worker(running, "/pub/a.txt")
    assert all(r.status == 200 for rs in seen.values() for r in rs)
    assert "restarting it in 1s" in running.log_text()


def _purge_reaches_every_worker(running: ProxyProcess, moto: MotoS3Server, bucket: str) -> None:
    # Both workers cache the first version (max-age=600: without a purge they would serve it).
    _from_every_worker(running, "/pub/p.txt", lambda r: r.header("X-Cache") == "HIT")
    moto.put_object(bucket, "p.txt", b"version 2", CacheControl="max-age=600")
    purged = running.request("POST", "/admin/cache/purge/pub/p.txt", headers=admin())
    assert purged.status == 200
    seen = _from_every_worker(running, "/pub/p.txt", lambda r: r.body == b"version 2")
    # The purge reached the other worker before the test's next request: no stale answer.
    stale = [w for w, rs in seen.items() for r in rs if r.body != b"version 2"]
    assert stale == []


def test_purge_on_one_worker_reaches_the_other_without_redis(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "p.txt", b"version 1", CacheControl="max-age=600")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY)))
    _purge_reaches_every_worker(running, moto_s3, s3_bucket)


def test_purge_on_one_worker_reaches_the_other_through_redis(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    moto_s3.put_object(s3_bucket, "p.txt", b"version 1", CacheControl="max-age=600")
    running = proxy(_workers(config(moto_s3, s3_bucket, redis_cache(redis_server))))
    # the workers subscribe to the purge channel once they run: give them a moment to
    wait_until(lambda: running.get("/ready").status == 200, timeout=10, what="both workers up")
    _purge_reaches_every_worker(running, moto_s3, s3_bucket)


def _digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sigterm_waits_for_both_workers_to_drain(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    body = os.urandom(8 * 1024 * 1024)
    moto_s3.put_object(s3_bucket, "large.bin", body)
    running = proxy(_workers(config(moto_s3, s3_bucket, {}), shutdown_grace_seconds=120))
    downloads: dict[int, RawDownload] = {}
    try:
        for _ in range(ATTEMPTS):
            download = RawDownload(running.port, "/pub/large.bin")
            download.read_head()
            worker = int(re.search(rb"X-Yatagarasu-Worker: (\d+)", download.head).group(1))  # type: ignore[union-attr]
            if worker in downloads:
                download.close()
                continue
            downloads[worker] = download
            download.read(1024 * 1024)
            if len(downloads) == WORKERS:
                break
        assert sorted(downloads) == [0, 1]
        running.send_signal(signal.SIGTERM)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(lambda d: d.read_to_end(pause=0.002), downloads.values()))
    finally:
        for download in downloads.values():
            download.close()
    assert [_digest(d.body) for d in downloads.values()] == [_digest(body)] * WORKERS
    assert all(d.closed for d in downloads.values())
    code = running.wait(timeout=60)
    assert clean_exit(code), code
    log = running.log_text()
    assert log.count("shutdown complete") == WORKERS
    assert "all workers stopped" in log
    assert "aborted" not in log and "SIGKILL" not in log


def test_sighup_to_the_parent_reloads_every_worker(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "r.txt", b"reloaded")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY)))
    _wait_all_up(running)
    assert running.get("/two/r.txt").status == 404
    rewrite(running, lambda d: d["buckets"].append(bucket_config(moto_s3, "two", s3_bucket)))
    running.send_signal(signal.SIGHUP)
    for worker in range(WORKERS):
        running.wait_for_log(f"worker {worker}] configuration reloaded: generation 2")
    seen = _from_every_worker(running, "/two/r.txt", lambda r: r.status == 200)
    assert {w for w, rs in seen.items() if rs[-1].body == b"reloaded"} == set(range(WORKERS))
    assert running.is_running()


def test_admin_reload_on_one_worker_reaches_the_others(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "r.txt", b"reloaded")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY)))
    _wait_all_up(running)
    rewrite(running, lambda d: d["buckets"].append(bucket_config(moto_s3, "three", s3_bucket)))
    answer = running.request("POST", "/admin/reload", headers=admin())
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["buckets"]["added"] == ["three"]
    first = _worker(answer)
    for worker in range(WORKERS):
        if worker != first:
            running.wait_for_log(f"worker {worker}] configuration reloaded: generation 2")
    # Every worker serves the new bucket: none stayed on the old generation.
    seen = _from_every_worker(running, "/three/r.txt", lambda r: r.status == 200)
    assert {w for w, rs in seen.items() if rs[-1].status == 200} == set(range(WORKERS))


def test_port_in_use_is_reported_once_before_any_worker(
    tmp_path: Any, moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    from devharness.proxy_config import write_config

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        document = _workers(config(moto_s3, s3_bucket, MEMORY), address=LOOPBACK, port=port)
        path = write_config(document, tmp_path / "busy.yaml")
        result = run_twistd(["-n", "--pidfile=", "yatagarasu", "--config", str(path)], tmp_path)
    assert result.returncode == 1, result.output
    assert result.output.count(f"cannot listen on {LOOPBACK}:{port} (proxy)") == 1
    assert "worker 0 started" not in result.output


def test_check_names_the_workers(tmp_path: Any, moto_s3: MotoS3Server, s3_bucket: str) -> None:
    result = check_config(_workers(config(moto_s3, s3_bucket, MEMORY)), tmp_path)
    assert result.returncode == 0, result.output
    assert f"workers: {WORKERS} processes\n" in result.output
    bound = _workers(config(moto_s3, s3_bucket, MEMORY), worker_cpu_affinity=True)
    result = check_config(bound, tmp_path)
    assert result.returncode == 0, result.output
    assert f"workers: {WORKERS} processes, each bound to a CPU\n" in result.output


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_worker_cpu_affinity_binds_each_worker_to_its_own_cpu(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"hello", CacheControl="max-age=600")
    running = proxy(_workers(config(moto_s3, s3_bucket, MEMORY), worker_cpu_affinity=True))
    _wait_all_up(running)
    allowed = sorted(os.sched_getaffinity(0))
    pids = _pids(running)
    assert sorted(pids) == list(range(WORKERS))
    for worker, pid in pids.items():
        cpu = allowed[worker % len(allowed)]
        running.wait_for_log(f"worker {worker} bound to CPU {cpu}", timeout=10)
        assert _thread_masks(pid) == {frozenset({cpu})}
    assert os.sched_getaffinity(running.pid) == set(allowed)  # the parent stays unbound
    seen = _from_every_worker(running, "/pub/a.txt")
    assert all(r.status == 200 and r.body == b"hello" for rs in seen.values() for r in rs)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"workers": 0}, "server.workers: must be 1..64"),
        ({"workers": 65}, "server.workers: must be 1..64"),
        ({"worker_cpu_affinity": True}, "server.worker_cpu_affinity: needs server.workers > 1"),
    ],
)
def test_check_refuses_bad_worker_settings(
    tmp_path: Any, moto_s3: MotoS3Server, s3_bucket: str, server: dict[str, Any], message: str
) -> None:
    document = config(moto_s3, s3_bucket, MEMORY)
    document["server"] = server
    result = check_config(document, tmp_path)
    assert result.returncode == 1
    assert message in result.output
