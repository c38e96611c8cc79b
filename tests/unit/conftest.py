"""
Unit tests run on ``Clock`` / ``MemoryReactorClock`` only: no reactor runs here.

A test that returns a Deferred (the ``yatagarasu.testing`` contract mixins do) must return one
that has already fired; its result (or failure) is the test's. pytest-twisted, which would wait
on the real reactor, does not see unit tests (this hook answers first).
"""

from __future__ import annotations

import inspect

import pytest
from twisted.internet.defer import Deferred

from yatagarasu.testing import result_of


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool:
    """Call the test; a Deferred or coroutine it returns must have fired without a reactor."""
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    outcome = pyfuncitem.obj(**arguments)
    if inspect.iscoroutine(outcome):
        outcome = Deferred.fromCoroutine(outcome)
    if isinstance(outcome, Deferred):
        result_of(outcome)
    return True
