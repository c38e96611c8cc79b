"""
The ``s3`` audit sink through the real ``twistd -n yatagarasu`` against moto with SigV4
checking: batches appear as ``audit/yatagarasu-audit-YYYY-MM-DD-HH-MM-SS-<instance>.jsonl[.gz]``
objects holding every correlation id, uploaded with signed PUTs; the last batch is flushed at
SIGTERM; while the audit moto is killed, requests go on, the spool grows and uploads fail
(metrics), and once moto is back on the same port the spool drains; a proxy stopped with
batches still spooled delivers them after its restart.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.audit_export import exported_ids, exported_objects, s3_export_section
from devharness.moto_s3 import MotoS3Server
from devharness.ports import free_port
from devharness.twistd import ProxyProcess, clean_exit
from devharness.waiting import StartupError, wait_until

AUDIT_BUCKET = "audit-trail"
NAME = re.compile(r"audit/yatagarasu-audit-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-it(-\d+)?\.jsonl(\.gz)?")
SPOOL_FILES = 'yatagarasu_audit_spool_files{sink="s3"}'
UPLOAD_FAILURES = 'yatagarasu_audit_upload_failures_total{sink="s3"}'


@pytest.fixture
def audit_moto(tmp_path: Path) -> Iterator[MotoS3Server]:
    """A moto of the test's own for the audit bucket, restartable with the same key."""
    server = MotoS3Server(tmp_path / "audit-moto", port=free_port(), seed=20261202)
    try:
        server.start()
    except (StartupError, ImportError, OSError) as exc:
        pytest.fail(f"could not start moto S3 with auth on: {exc}")
    try:
        server.create_bucket(AUDIT_BUCKET)
        yield server
    finally:
        server.stop()


def audited(
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    audit_moto: MotoS3Server,
    spool: Path,
    **s3_export: Any,
) -> dict[str, Any]:
    section = s3_export_section(audit_moto, AUDIT_BUCKET, spool, **s3_export)
    return make_proxy_config(
        {"pub": s3_bucket},
        audit_log={"enabled": True, "outputs": ["s3"], "skip_probes": True, "s3_export": section},
    )


def ids_of(running: ProxyProcess, paths: list[str]) -> list[str]:
    ids = []
    for path in paths:
        request_id = running.get(path).header("x-request-id")
        assert request_id is not None
        ids.append(request_id)
    return ids


def test_batches_reach_s3_signed_named_and_holding_every_id(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    audit_moto: MotoS3Server,
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"abc")
    config = audited(make_proxy_config, s3_bucket, audit_moto, tmp_path / "spool", compress=True)
    running = proxy(config)
    sent = ids_of(running, [f"/pub/a.txt?n={i}" for i in range(20)] + ["/pub/nope"] * 5)
    sent += ids_of(running, ["/nowhere"] * 5)
    wait_until(
        lambda: set(sent) <= set(exported_ids(audit_moto, AUDIT_BUCKET)),
        timeout=30,
        what="every id in S3",
    )
    objects = exported_objects(audit_moto, AUDIT_BUCKET)
    assert objects and all(NAME.fullmatch(key) for key in objects)
    records = [r for batch in objects.values() for r in batch]
    assert sorted(r["correlation_id"] for r in records) == sorted(sent)  # each once
    assert {r["response_status"] for r in records} == {200, 404}
    assert list(records[0])[:2] == ["timestamp", "correlation_id"]
    wait_until(lambda: running.metric(SPOOL_FILES) == 0, timeout=10, what="an empty spool")
    written = running.metric('yatagarasu_audit_records_total{result="written",sink="s3"}')
    assert written == len(sent)
    assert running.metric(UPLOAD_FAILURES) == 0
    assert clean_exit(running.stop(signal.SIGTERM))
    assert list((tmp_path / "spool").iterdir()) == []


def test_sigterm_flushes_the_last_batch(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    audit_moto: MotoS3Server,
) -> None:
    config = audited(
        make_proxy_config, s3_bucket, audit_moto, tmp_path / "spool", export_interval_seconds=3600
    )
    running = proxy(config)
    sent = ids_of(running, [f"/pub/missing-{i}" for i in range(12)])
    assert exported_ids(audit_moto, AUDIT_BUCKET) == []  # the interval is an hour
    assert clean_exit(running.stop(signal.SIGTERM))
    assert sorted(exported_ids(audit_moto, AUDIT_BUCKET)) == sorted(sent)
    assert list((tmp_path / "spool").iterdir()) == []


def test_s3_down_then_up_the_spool_grows_then_drains(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    audit_moto: MotoS3Server,
) -> None:
    moto_s3.put_object(s3_bucket, "a.txt", b"abc")
    config = audited(make_proxy_config, s3_bucket, audit_moto, tmp_path / "spool")
    running = proxy(config)
    before = ids_of(running, ["/pub/a.txt"] * 5)
    wait_until(
        lambda: set(before) <= set(exported_ids(audit_moto, AUDIT_BUCKET)),
        timeout=30,
        what="the first batch in S3",
    )
    audit_moto.kill()
    during: list[str] = []

    def spool_grows() -> bool:
        during.extend(ids_of(running, ["/pub/a.txt"] * 3))
        return running.metric(SPOOL_FILES) >= 3

    wait_until(spool_grows, timeout=60, interval=0.3, what="three batches in the spool")
    assert all(running.get("/pub/a.txt").status == 200 for _ in range(3))  # requests go on
    assert running.metric(UPLOAD_FAILURES) >= 1
    assert len(list((tmp_path / "spool").iterdir())) >= 3
    assert "s3 audit sink: upload of audit/yatagarasu-audit-" in running.log_text()
    assert audit_moto.secret_key not in running.settled_log_text()

    audit_moto.restart()  # same port, same key, empty: the bucket is made again
    audit_moto.create_bucket(AUDIT_BUCKET)
    wait_until(
        lambda: set(during) <= set(exported_ids(audit_moto, AUDIT_BUCKET)),
        timeout=60,
        what="the spool to drain",
    )
    wait_until(lambda: running.metric(SPOOL_FILES) == 0, timeout=30, what="an empty spool")
    assert list((tmp_path / "spool").iterdir()) == []
    assert clean_exit(running.stop(signal.SIGTERM))


def test_a_restart_sends_what_the_last_run_left_in_the_spool(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    audit_moto: MotoS3Server,
) -> None:
    config = audited(make_proxy_config, s3_bucket, audit_moto, tmp_path / "spool")
    audit_moto.kill()
    first = proxy(config)
    sent = ids_of(first, [f"/pub/missing-{i}" for i in range(10)])
    assert clean_exit(first.stop(signal.SIGTERM))
    assert "stay in the spool" in first.log_text()
    left = list((tmp_path / "spool").iterdir())
    assert left and all(p.name.startswith("yatagarasu-audit-") for p in left)

    audit_moto.restart()
    audit_moto.create_bucket(AUDIT_BUCKET)
    second = proxy(config)
    wait_until(
        lambda: set(sent) <= set(exported_ids(audit_moto, AUDIT_BUCKET)),
        timeout=30,
        what="the earlier run's records in S3",
    )
    second.wait_for_log("batch(es) from an earlier run wait in the spool")
    wait_until(lambda: second.metric(SPOOL_FILES) == 0, timeout=30, what="an empty spool")
    assert clean_exit(second.stop(signal.SIGTERM))
