"""
The contract every authorizer honours (``IAuthorizer``): one mixin, run against each one.

Subclass :class:`AuthorizerContract`, set ``self.authorizer`` before each test and say which
query it allows and which it denies (:meth:`AuthorizerContract.allowed_query`,
:meth:`AuthorizerContract.denied_query`). Tests return Deferreds, like the other contracts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from yatagarasu.interfaces import IAuthorizer, IImmediateAuthorizer
from yatagarasu.testing.deferreds import deferred_test
from yatagarasu.values import DECISION_RESULTS, AuthorizationQuery, Decision


class AuthorizerContract:
    """
    The promises of ``IAuthorizer`` as tests. Set :attr:`authorizer` before each test.

    :ivar authorizer: the authorizer under test, built by its factory.
    """

    authorizer: Any

    def allowed_query(self) -> AuthorizationQuery:
        """
        :returns: a query the authorizer allows.
        :raises NotImplementedError: until the subclass says.
        """
        raise NotImplementedError("return an AuthorizationQuery(...) that is allowed")

    def denied_query(self) -> AuthorizationQuery:
        """
        :returns: a query the authorizer denies.
        :raises NotImplementedError: until the subclass says.
        """
        raise NotImplementedError("return an AuthorizationQuery(...) that is denied")

    async def _decision(self, query: AuthorizationQuery) -> Decision:
        answer = self.authorizer.authorize(query)
        assert isinstance(answer, Deferred), "authorize must answer a Deferred, not raise"
        decision = await answer
        assert isinstance(decision, Decision), f"{decision!r} is not a Decision"
        assert decision.result in DECISION_RESULTS, f"result {decision.result!r}"
        assert isinstance(decision.reason, str)
        return decision

    def test_provides_interface(self) -> None:
        assert verifyObject(IAuthorizer, self.authorizer)
        assert isinstance(self.authorizer.name, str) and self.authorizer.name

    def test_declares_the_optional_interface_it_implements(self) -> None:
        """The proxy uses ``authorize_now`` only from authorizers that declare it."""
        if IImmediateAuthorizer.providedBy(self.authorizer):
            assert verifyObject(IImmediateAuthorizer, self.authorizer)
        else:
            assert not hasattr(self.authorizer, "authorize_now"), (
                f"{type(self.authorizer).__name__} has authorize_now but does not declare"
                " IImmediateAuthorizer"
            )

    @deferred_test
    async def test_allows_the_allowed_query(self) -> None:
        decision = await self._decision(self.allowed_query())
        assert decision.allowed
        assert decision.result in ("allow", "cached")

    @deferred_test
    async def test_denies_the_denied_query_with_a_reason(self) -> None:
        decision = await self._decision(self.denied_query())
        assert not decision.allowed
        assert decision.result in ("deny", "cached")
        assert decision.reason, "the reason is the 403's message"

    @deferred_test
    async def test_immediate_answers_agree_with_authorize(self) -> None:
        """``authorize_now`` says nothing, or what ``authorize`` says."""
        immediate = IImmediateAuthorizer(self.authorizer, None)
        if immediate is None:
            return
        for query in (self.allowed_query(), self.denied_query()):
            decision = await self._decision(query)
            now = immediate.authorize_now(query)
            assert now is None or now.allowed == decision.allowed

    @deferred_test
    async def test_close_answers_a_deferred(self) -> None:
        closing = self.authorizer.close()
        assert isinstance(closing, Deferred)
        await closing
