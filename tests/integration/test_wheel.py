"""The built wheel, installed into a fresh venv with its runtime dependencies only (no ``dev``
extra): it holds only the proxy, every module of it imports, and ``twistd yatagarasu`` runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Imports every module of the installed package and prints what it found, as JSON.
IMPORT_ALL = """
import importlib, json, pkgutil, yatagarasu
names = ["yatagarasu"] + [
    info.name for info in pkgutil.walk_packages(yatagarasu.__path__, "yatagarasu.")
]
for name in names:
    importlib.import_module(name)
print(json.dumps({"file": yatagarasu.__file__, "modules": names}))
"""

#: Modules of the dev extra (and the harness) that the runtime venv must not have.
DEV_ONLY = ("boto3", "botocore", "moto", "pytest", "devharness")


def source_modules() -> set[str]:
    """:returns: the dotted names of every module under the source tree's ``yatagarasu/``."""
    names = set()
    for path in (ROOT / "yatagarasu").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(
    argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion (bounded), capturing text output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_wheel_in_a_runtime_only_venv(tmp_path: Path) -> None:
    # Built from a copy without build/ and *.egg-info: setuptools would reuse a stale
    # build/lib left by an earlier build and ship modules that no longer exist.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".demo"
        ),
    )
    dist = tmp_path / "dist"
    build = run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(source),
        ],
        tmp_path,
        300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("yatagarasu-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"yatagarasu", "twisted"}

    env_dir = tmp_path / "runtime"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # Runtime dependencies come from the configured package index (no dev extra).
    install = run([python, "-m", "pip", "install", str(wheel)], tmp_path, 600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    for module in DEV_ONLY:
        probe = run([python, "-c", f"import {module}"], tmp_path, 60)
        assert probe.returncode != 0, f"{module} is importable in the runtime venv"

    imported = run([python, "-c", IMPORT_ALL], tmp_path, 120)
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]
    found = json.loads(imported.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(env_dir)), found["file"]
    assert set(found["modules"]) == source_modules()

    twistd = str(env_dir / "bin" / "twistd")
    listed = run([twistd, "--help"], tmp_path, 120)
    assert "yatagarasu" in listed.stdout.split("Commands:", 1)[1], listed.stdout + listed.stderr
    plugin_help = run([twistd, "yatagarasu", "--help"], tmp_path, 120)
    assert plugin_help.returncode == 0, plugin_help.stdout + plugin_help.stderr
    assert "--config" in plugin_help.stdout

    # --check builds everything but the listeners: plugin discovery works from the wheel.
    secrets = {
        name: f"value-of-{name}-with-enough-bytes-for-any-hmac-key-0123456789abcdef"
        for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "JWT_SECRET", "SIGNED_URL_KEY")
    }
    example = ROOT / "etc" / "yatagarasu.example.yaml"
    check = run(
        [twistd, "yatagarasu", "--check", "--config", str(example)],
        tmp_path,
        120,
        env={**os.environ, **secrets, "CACHE_DIR": str(tmp_path / "cache")},  # any user's
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "configuration OK" in check.stdout, check.stdout

    # The yatagarasu-config console script (setup.cfg entry point) comes with the wheel.
    rust = ROOT / "tests" / "fixtures" / "rust_configs" / "no_cache_layers.yaml"
    migrated = run(
        [str(env_dir / "bin" / "yatagarasu-config"), "migrate", str(rust)], tmp_path, 120
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "cache.layers: dropped (an empty list" in migrated.stderr
    assert "layers" not in migrated.stdout and "enabled: true" in migrated.stdout
