"""
The plugin authors' test kit (yatagarasu.testing): its fakes, and that it imports without pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from yatagarasu.testing import fake_request, result_of


def test_fake_request_carries_what_schemes_read() -> None:
    request = fake_request(
        "/b/k", headers={"Authorization": "Bearer t"}, args={"token": ["q"]}, client_ip="192.0.2.4"
    )
    assert request.getHeader(b"authorization") == b"Bearer t"
    assert request.args == {b"token": [b"q"]}
    assert request.getClientAddress().host == "192.0.2.4"


def test_result_of_requires_a_fired_deferred() -> None:
    from twisted.internet.defer import Deferred

    with pytest.raises(AssertionError):
        result_of(Deferred())


def test_the_kit_imports_without_pytest() -> None:
    """The runtime install has no pytest: ``yatagarasu.testing`` must not need it."""
    script = textwrap.dedent(
        """
        import sys

        class NoTestTools:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"pytest", "_pytest", "pytest_twisted"}:
                    raise ImportError(f"{name} is not installed here")

        sys.meta_path.insert(0, NoTestTools())
        import yatagarasu.testing

        print(len(yatagarasu.testing.__all__))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 8
