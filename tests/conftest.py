"""Shared pytest fixtures: the Twisted reactor, moto S3, redis-server and the real proxy.

Fixtures (the objects they return come from the ``devharness`` package at the repository root):

- ``reactor``: the global reactor pytest-twisted installed.
- ``moto_s3`` (session): :class:`MotoS3Server` with SigV4 checking on and request recording.
- ``s3_bucket``: a fresh, uniquely named bucket in ``moto_s3``.
- ``redis_server``: a started :class:`RedisServer` (kill/restart/freeze/thaw), per test.
- ``redis_factory``: ``redis_factory() -> RedisServer`` for more than one.
- ``make_proxy_config``: ``make_proxy_config({"public": bucket}, port=0, **top_level) -> dict``.
- ``proxy``: ``proxy(config, env=None, timeout=30.0, extra_args=()) -> ProxyProcess``; waits
  for ``GET /health`` == 200; always killed at teardown (its log is printed when the test
  failed).
- ``twistd_check``: ``twistd_check(config_or_path, env=None) -> TwistdResult`` for
  ``twistd yatagarasu --check --config X``.

Nothing here skips: a tool that cannot start fails the test with an install hint.

``YATAGARASU_TEST_SLOWDOWN_SECONDS=N`` sleeps N seconds once, before the first unit test: it
proves that no test depends on how long the suite has run (tokens or deadlines computed early).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devharness.http_client import http_request
from devharness.install_hint import INSTALL_HINT
from devharness.moto_s3 import MotoS3Server, make_moto
from devharness.proxy_config import proxy_config
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess, TwistdResult, check_config, start_proxy
from devharness.waiting import StartupError


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"_report_{report.when}", report)
    return report


SLOWDOWN_ENV = "YATAGARASU_TEST_SLOWDOWN_SECONDS"
_UNIT_TESTS = Path(__file__).resolve().parent / "unit"
_slowed_down = pytest.StashKey[bool]()


def _slowdown_seconds() -> float:
    """
    :returns: ``$YATAGARASU_TEST_SLOWDOWN_SECONDS`` (0 when unset).
    :raises pytest.UsageError: when it is not a number >= 0.
    """
    raw = os.environ.get(SLOWDOWN_ENV, "").strip()
    try:
        seconds = float(raw) if raw else 0.0
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise pytest.UsageError(f"{SLOWDOWN_ENV} must be a number of seconds >= 0, not {raw!r}")
    return seconds


def pytest_configure(config: pytest.Config) -> None:
    """
    Check ``$YATAGARASU_TEST_SLOWDOWN_SECONDS`` before anything runs, and keep the credentials
    chain of proxies built in this process off the EC2 instance metadata service's link-local
    address (``AWS_EC2_METADATA_DISABLED``; the tests of that source use their own endpoint).
    """
    _slowdown_seconds()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Sleep ``$YATAGARASU_TEST_SLOWDOWN_SECONDS`` once, before the first unit test."""
    stash = item.config.stash
    if stash.get(_slowed_down, False) or _UNIT_TESTS not in item.path.parents:
        return
    stash[_slowed_down] = True
    seconds = _slowdown_seconds()
    if seconds:
        capture = item.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n{SLOWDOWN_ENV}: sleeping {seconds:g}s before the first unit test")
        time.sleep(seconds)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"_report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def reactor() -> Any:
    """The global reactor that pytest-twisted installed (pytest-twisted has no such fixture)."""
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """A moto S3 server (subprocess) with an IAM user and SigV4 checking **on**."""
    workdir = tmp_path_factory.mktemp("moto")
    try:
        server = make_moto(workdir)
    except (StartupError, ImportError, OSError) as exc:
        pytest.fail(f"could not start moto S3 with auth on: {exc}\n{INSTALL_HINT}")
    try:
        # make_moto() already verified this; assert it here too, visibly.
        unsigned = http_request("GET", server.probe_url, timeout=10.0)
        assert unsigned.status == 403, f"unsigned GET answered {unsigned.status}, not 403"
        assert server.get_object(server.PROBE_BUCKET, server.PROBE_KEY) == b"probe"
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3Server) -> str:
    """A new, empty, uniquely named bucket in ``moto_s3``."""
    return moto_s3.create_bucket()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """``redis_factory()`` starts another private redis-server; all are stopped at teardown."""
    servers: list[RedisServer] = []
    counter = itertools.count()

    def start() -> RedisServer:
        server = RedisServer(tmp_path / f"redis{next(counter)}")
        servers.append(server)
        try:
            return server.start()
        except StartupError as exc:
            pytest.fail(f"could not start redis-server: {exc}\n{INSTALL_HINT}")

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(redis_factory: Callable[[], RedisServer]) -> RedisServer:
    """A started redis-server on a free 127.0.0.1 port; ``kill()``/``restart()`` for chaos."""
    return redis_factory()


@pytest.fixture
def make_proxy_config(moto_s3: MotoS3Server) -> Callable[..., dict[str, Any]]:
    """``make_proxy_config({"public": s3_bucket}, port=0, **top_level)`` → config dict."""

    def make(
        buckets: Mapping[str, str] | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        return proxy_config(moto_s3, buckets, **kwargs)

    return make


@pytest.fixture
def proxy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ProxyProcess]]:
    """
    ``proxy(config, env=None, timeout=30.0, extra_args=())`` runs the real
    ``twistd -n yatagarasu --config <tmp>/proxyN/yatagarasu.yaml`` and waits for
    ``/health``. Every proxy started is killed at teardown.
    """
    started: list[ProxyProcess] = []
    counter = itertools.count()

    def start(
        config: Mapping[str, Any] | Path,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> ProxyProcess:
        workdir = tmp_path / f"proxy{next(counter)}"
        try:
            process = start_proxy(config, workdir, env=env, timeout=timeout, extra_args=extra_args)
        except StartupError as exc:
            pytest.fail(str(exc))
        started.append(process)
        return process

    yield start
    failed = _test_failed(request)
    for process in started:
        process.kill()
        if failed:
            print(f"\n----- proxy log ({process.log_path}) -----\n{process.log_text()[-20000:]}")


@pytest.fixture
def twistd_check(tmp_path: Path) -> Callable[..., TwistdResult]:
    """``twistd_check(config_or_path, env=None, timeout=30.0)`` → ``TwistdResult`` of
    ``twistd yatagarasu --check --config X`` (run in ``tmp_path/check``)."""

    def run(
        config: Mapping[str, Any] | Path,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> TwistdResult:
        return check_config(config, tmp_path / "check", env=env, timeout=timeout)

    return run
