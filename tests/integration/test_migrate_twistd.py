"""
``yatagarasu-config migrate`` on Rust Yatagarasu style files (tests/fixtures/rust_configs),
through the console script of the venv and the real ``twistd yatagarasu``: every migrated
fixture passes ``--check``, every unmigrated one fails naming the migrate command, and a bucket
at ``/admin`` serves objects while the admin API answers at the prefix the migration chose.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.twistd import ProxyProcess, TwistdResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rust_configs"
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))
SECRET = "migrate-secret-" + "m" * 48
#: The console script ``setup.cfg`` installs next to this interpreter.
CONSOLE_SCRIPT = Path(sys.executable).with_name("yatagarasu-config")


@pytest.fixture
def env(moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path) -> dict[str, str]:
    """Every ``${VAR}`` the fixtures use."""
    return {
        "PROXY_ADDR": f"{LOOPBACK}:{free_port()}",
        "METRICS_ADDR": f"{LOOPBACK}:{free_port()}",
        "S3_BUCKET": s3_bucket,
        "S3_ENDPOINT": moto_s3.endpoint_url,
        "S3_ACCESS_KEY": moto_s3.access_key,
        "S3_SECRET_KEY": moto_s3.secret_key,
        "JWT_SECRET": SECRET,
        "CACHE_DIR": str(tmp_path / "disk-cache"),
        # --check builds the Redis layer without connecting: nothing needs to listen here
        "REDIS_URL": f"redis://{LOOPBACK}:{free_port()}/0",
        "OPA_URL": f"http://{LOOPBACK}:{free_port()}",
        "OPENFGA_URL": f"http://{LOOPBACK}:{free_port()}",
        "OPENFGA_STORE_ID": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    }


def migrate(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "migrate", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("source", FIXTURE_FILES, ids=lambda p: p.stem)
def test_each_fixture_migrates_and_passes_check(
    source: Path,
    tmp_path: Path,
    env: dict[str, str],
    twistd_check: Callable[..., TwistdResult],
) -> None:
    out = tmp_path / "migrated.yaml"
    result = migrate(source, out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "key(s) changed" in result.stdout
    text = out.read_text()
    assert "${S3_ENDPOINT}" in text and "${S3_SECRET_KEY}" in text  # not expanded
    check = twistd_check(out, env=env)
    assert check.returncode == 0, check.output
    assert f"configuration OK: {out}" in check.output


@pytest.mark.parametrize("source", FIXTURE_FILES, ids=lambda p: p.stem)
def test_check_on_an_unmigrated_fixture_names_the_migrate_command(
    source: Path, env: dict[str, str], twistd_check: Callable[..., TwistdResult]
) -> None:
    check = twistd_check(source, env=env)
    assert check.returncode == 1, check.output
    assert f"invalid configuration {source}: " in check.output
    assert f"a Rust Yatagarasu key; run: yatagarasu-config migrate {source}" in check.output


def test_console_script_fails_with_status_1_on_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [\n")
    result = migrate(bad, tmp_path / "out.yaml")
    assert result.returncode == 1
    assert f"yatagarasu-config: cannot migrate {bad}: {bad} is not valid YAML" in result.stderr
    assert not (tmp_path / "out.yaml").exists()


def admin_headers() -> dict[str, str]:
    claims = {"sub": "ops", "role": "admin", "exp": int(time.time()) + 3600}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


def test_bucket_at_admin_serves_objects_and_admin_api_moves(
    tmp_path: Path,
    env: dict[str, str],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    proxy: Callable[..., ProxyProcess],
    twistd_check: Callable[..., TwistdResult],
) -> None:
    out = tmp_path / "migrated.yaml"
    assert migrate(FIXTURES / "admin_bucket.yaml", out).returncode == 0
    config: dict[str, Any] = yaml.safe_load(out.read_text())
    assert config["server"]["admin_path_prefix"] == "/_admin"
    check = twistd_check(out, env=env)
    assert "admin API: /_admin/... (jwt with admin_claims)" in check.output, check.output
    assert "  /admin -> s3://" in check.output
    config["server"]["address"] = LOOPBACK  # start_proxy picks the port
    moto_s3.put_object(s3_bucket, "report.txt", b"quarterly\n")
    moto_s3.put_object(s3_bucket, "cache/stats", b"an object, not the admin API\n")
    running = proxy(config, env=env)

    assert running.get("/admin/report.txt").body == b"quarterly\n"
    shadowed = running.get("/admin/cache/stats", headers=admin_headers())
    assert (shadowed.status, shadowed.body) == (200, b"an object, not the admin API\n")

    assert running.get("/_admin/cache/stats").status == 401
    stats = running.get("/_admin/cache/stats", headers=admin_headers())
    assert stats.status == 200
    assert stats.json()["status"] == "success"
    purge = running.request("POST", "/_admin/cache/purge", headers=admin_headers())
    assert purge.status == 200
    assert purge.json()["status"] == "success"


def test_server_threads_is_accepted_with_a_deprecation_warning(
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
    proxy: Callable[..., ProxyProcess],
    twistd_check: Callable[..., TwistdResult],
) -> None:
    config = make_proxy_config({"pub": s3_bucket})
    config["server"]["threads"] = 1
    check = twistd_check(config)
    assert check.returncode == 0, check.output
    assert "deprecated: server.threads: a Rust Yatagarasu key, read as server.workers" in (
        check.output
    )
    running = proxy(config)
    running.wait_for_log("deprecated configuration key: server.threads: a Rust Yatagarasu key")
    assert running.get("/health").status == 200
