"""
Static checks of the source tree, by reading it with ``ast`` (nothing is imported or run):

- the installed package imports nothing from the dev extra or the development harness;
- ``yatagarasu.http`` imports nothing above it;
- no module imports the global reactor (indented imports included), except ``tap.py``
  ``Options.postOptions``;
- no ``__init__.py`` under ``twisted/`` (it would hide Twisted's own ``twisted.plugins``);
- the unit tests neither use pytest-twisted nor the real reactor.
"""

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


#: The one place allowed to import the global reactor: (file, enclosing function).
GLOBAL_REACTOR_ALLOWED = frozenset({("yatagarasu/tap.py", "Options.postOptions")})


def imports_global_reactor(node: ast.Import | ast.ImportFrom) -> bool:
    """:returns: whether this import statement imports the global reactor."""
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("twisted.internet.reactor") for alias in node.names)
    module = node.module or ""
    return module.startswith("twisted.internet.reactor") or (
        module == "twisted.internet" and any(alias.name == "reactor" for alias in node.names)
    )


class _Scan(ast.NodeVisitor):
    """Walks a module keeping the dotted name of the enclosing classes and functions."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.found: list[tuple[int, str]] = []

    def _enter(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _enter

    @classmethod
    def scan(cls, source: str) -> list[tuple[int, str]]:
        visitor = cls()
        visitor.visit(ast.parse(source))
        return visitor.found


class _ReactorImports(_Scan):
    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if imports_global_reactor(node):
            self.found.append((node.lineno, ".".join(self.scope)))

    visit_Import = visit_ImportFrom = _import


def global_reactor_imports(source: str) -> list[tuple[int, str]]:
    """
    :param source: Python source.
    :returns: ``(line, enclosing scope)`` of every import of the global reactor, at any depth
        (the scope is ``""`` at module level, ``"Class.method"`` inside one).
    """
    return _ReactorImports.scan(source)


def test_the_reactor_scan_finds_indented_imports_with_their_scope() -> None:
    source = (
        "from twisted.internet import reactor\n"
        "class A:\n"
        "    def f(self):\n"
        "        from twisted.internet import defer, reactor as r\n"
        "def g():\n"
        "    import twisted.internet.reactor\n"
        "    async def h():\n"
        "        from twisted.internet.reactor import callLater\n"
    )
    assert global_reactor_imports(source) == [(1, ""), (4, "A.f"), (6, "g"), (8, "g.h")]


def test_the_reactor_scan_ignores_other_twisted_imports() -> None:
    source = "from twisted.internet import task, defer\nimport twisted.internet\nreactor = 1\n"
    assert global_reactor_imports(source) == []


def test_only_tap_post_options_imports_the_global_reactor() -> None:
    modules = sorted([*(ROOT / "yatagarasu").rglob("*.py"), *(ROOT / "twisted").rglob("*.py")])
    assert ROOT / "twisted" / "plugins" / "yatagarasu_plugin.py" in modules
    found = {
        (str(path.relative_to(ROOT)), scope)
        for path in modules
        for _, scope in global_reactor_imports(path.read_text(encoding="utf-8"))
    }
    assert found == GLOBAL_REACTOR_ALLOWED  # the allowed one is still found: the scan works


def test_no_init_under_twisted() -> None:
    """``twisted/plugins`` is a namespace directory added to Twisted's own package."""
    assert (ROOT / "twisted" / "plugins").is_dir()
    assert sorted((ROOT / "twisted").rglob("__init__.py")) == []


class _RealReactorUse(_Scan):
    """pytest-twisted, the global reactor, trial's reactor-spinning ``TestCase``, or the
    ``reactor`` fixture (requested by a test or fixture, or defined as one)."""

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            modules = [node.module or ""]
        names = {alias.name for alias in node.names}
        if any(module.split(".")[0] == "pytest_twisted" for module in modules):
            self.found.append((node.lineno, "pytest-twisted"))
        elif imports_global_reactor(node):
            self.found.append((node.lineno, "the global reactor"))
        elif modules == ["twisted.trial.unittest"] and "TestCase" in names:
            self.found.append((node.lineno, "trial TestCase runs the reactor"))

    visit_Import = visit_ImportFrom = _import

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
        if fixture and node.name == "reactor":
            self.found.append((node.lineno, "defines a reactor fixture"))
        if (fixture or node.name.startswith("test")) and "reactor" in {
            a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        }:
            self.found.append((node.lineno, f"{node.name} requests the reactor fixture"))
        self._enter(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _function


def real_reactor_uses(source: str) -> list[tuple[int, str]]:
    """
    :param source: Python source of a test module.
    :returns: ``(line, what)`` for every use of pytest-twisted or the real reactor.
    """
    return _RealReactorUse.scan(source)


def test_the_test_scan_finds_each_kind_of_real_reactor_use() -> None:
    source = (
        "import pytest_twisted\n"
        "from pytest_twisted import ensureDeferred\n"
        "from twisted.trial.unittest import TestCase\n"
        "@pytest.fixture\n"
        "def reactor():\n"
        "    from twisted.internet import reactor\n"
        "async def test_x(reactor, tmp_path):\n"
        "    pass\n"
    )
    assert [line for line, _ in real_reactor_uses(source)] == [1, 2, 3, 5, 6, 7]


def test_the_test_scan_allows_fake_clocks_and_helpers_taking_a_reactor() -> None:
    source = (
        "from twisted.internet.task import Clock\n"
        "from twisted.internet.testing import MemoryReactorClock\n"
        "from twisted.trial.unittest import SynchronousTestCase\n"
        "def make_layer(reactor):\n"
        "    return reactor\n"
        "def test_y():\n"
        "    reactor = MemoryReactorClock()\n"
    )
    assert real_reactor_uses(source) == []


def test_unit_tests_do_not_use_pytest_twisted_or_the_real_reactor() -> None:
    modules = sorted((ROOT / "tests" / "unit").rglob("*.py"))
    assert len(modules) > 20
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in modules
        for line, what in real_reactor_uses(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
