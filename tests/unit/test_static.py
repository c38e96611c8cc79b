"""The installed package imports nothing from the dev extra or the development harness."""

from __future__ import annotations

import ast
from pathlib import Path

import yatagarasu.http

ROOT = Path(__file__).resolve().parents[2]

#: Top-level packages only the ``dev`` extra or the checkout provide.
DEV_ONLY = frozenset({"boto3", "botocore", "moto", "devharness"})


def dev_only_imports(source: str) -> list[tuple[int, str]]:
    """
    :param source: Python source.
    :returns: ``(line, module)`` for every import of a :data:`DEV_ONLY` package, at any depth
        (inside functions too).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in DEV_ONLY]
    return found


def test_the_scan_finds_nested_and_from_imports() -> None:
    source = "import os\nfrom moto.server import x\ndef f():\n    import boto3, json\n"
    assert dev_only_imports(source) == [(2, "moto.server"), (4, "boto3")]


def test_the_scan_ignores_lookalikes_and_relative_imports() -> None:
    assert dev_only_imports("import motor\nfrom .moto import x\nimport devharnesses\n") == []


def test_no_module_under_yatagarasu_imports_dev_only_packages() -> None:
    modules = sorted((ROOT / "yatagarasu").rglob("*.py"))
    assert len(modules) > 10  # the scan really looked at the package
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for line, name in dev_only_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_http_package_imports_nothing_above_it() -> None:
    """yatagarasu.http sits below web/, cache/, s3/ and auth/ (issue 9)."""
    package = Path(yatagarasu.http.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.startswith("yatagarasu")}
    assert ours and all(name.startswith("yatagarasu.http.") for name in ours)
