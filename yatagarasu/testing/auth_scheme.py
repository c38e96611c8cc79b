"""
The contract every auth scheme honours (``IAuthScheme``): one mixin, run against each scheme.

Subclass :class:`AuthSchemeContract`, set ``self.scheme`` before each test and say which
requests it accepts and refuses (:meth:`AuthSchemeContract.accepted_request`,
:meth:`AuthSchemeContract.refused_request`); build them with
:func:`yatagarasu.testing.fake_request`. Tests return Deferreds, like the cache layer contract.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from yatagarasu.errors import AuthenticationRequired, HTTPError, InvalidCredentials
from yatagarasu.interfaces import IAdminAuthSource, IAuthScheme, IImmediateAuthScheme
from yatagarasu.testing.deferreds import deferred_test
from yatagarasu.testing.requests import fake_request
from yatagarasu.values import Identity

#: The optional interfaces a scheme may provide besides ``IAuthScheme``.
OPTIONAL_INTERFACES = (IImmediateAuthScheme, IAdminAuthSource)


class AuthSchemeContract:
    """
    The promises of ``IAuthScheme`` as tests. Set :attr:`scheme` before each test.

    :ivar scheme: the scheme under test, built by its factory.
    """

    scheme: Any

    def accepted_request(self) -> IRequest:
        """
        :returns: a request with credentials the scheme accepts (a :func:`fake_request`).
        :raises NotImplementedError: until the subclass says.
        """
        raise NotImplementedError("return a fake_request(...) carrying good credentials")

    def refused_request(self) -> IRequest:
        """
        :returns: a request whose credentials are present but not acceptable (a wrong key,
            a bad signature): the scheme must answer ``InvalidCredentials``.
        :raises NotImplementedError: until the subclass says.
        """
        raise NotImplementedError("return a fake_request(...) carrying wrong credentials")

    def anonymous_request(self) -> IRequest:
        """:returns: a request without credentials (override if yours needs more)."""
        return fake_request()

    async def _refusal(self, request: IRequest) -> HTTPError:
        answer = self.scheme.authenticate(request)
        assert isinstance(answer, Deferred), "authenticate must answer a Deferred, not raise"
        try:
            identity = await answer
        except HTTPError as error:
            return error
        raise AssertionError(f"{request!r} was accepted as {identity!r}")

    def test_provides_interface(self) -> None:
        assert verifyObject(IAuthScheme, self.scheme)
        assert isinstance(self.scheme.name, str) and self.scheme.name

    def test_declares_the_optional_interfaces_it_implements(self) -> None:
        """The proxy uses ``authenticate_now`` only from schemes that declare it."""
        for optional in OPTIONAL_INTERFACES:
            if optional.providedBy(self.scheme):
                assert verifyObject(optional, self.scheme)
            else:
                present = [name for name in optional.names() if hasattr(self.scheme, name)]
                assert present != list(optional.names()), (
                    f"{type(self.scheme).__name__} has {present} but does not declare "
                    f"{optional.__name__}"
                )

    @deferred_test
    async def test_accepts_good_credentials_with_an_identity(self) -> None:
        answer = self.scheme.authenticate(self.accepted_request())
        assert isinstance(answer, Deferred)
        identity = await answer
        assert isinstance(identity, Identity)
        assert identity.scheme == self.scheme.name

    @deferred_test
    async def test_missing_credentials_are_authentication_required(self) -> None:
        error = await self._refusal(self.anonymous_request())
        assert isinstance(error, AuthenticationRequired)
        assert error.status == 401
        assert any(name.lower() == "www-authenticate" for name, _ in error.headers)

    @deferred_test
    async def test_unacceptable_credentials_are_invalid_credentials(self) -> None:
        error = await self._refusal(self.refused_request())
        assert isinstance(error, InvalidCredentials)
        assert error.status == 401

    @deferred_test
    async def test_does_not_write_to_the_request(self) -> None:
        requests = [self.accepted_request(), self.refused_request(), self.anonymous_request()]
        for request in requests:
            await self.scheme.authenticate(request).addErrback(lambda _: None)
        for request in requests:
            assert isinstance(request, DummyRequest), "build the requests with fake_request"
            assert request.written == []
            assert request.finished == 0
            assert request.responseCode is None
            assert list(request.responseHeaders.getAllRawHeaders()) == []

    @deferred_test
    async def test_immediate_answers_agree_with_authenticate(self) -> None:
        """``authenticate_now`` never refuses and never differs from ``authenticate``."""
        immediate = IImmediateAuthScheme(self.scheme, None)
        if immediate is None:
            assert not hasattr(self.scheme, "authenticate_now")
            return
        for request in (self.anonymous_request(), self.refused_request()):
            assert immediate.authenticate_now(request) is None
        identity = await self.scheme.authenticate(self.accepted_request())
        now = immediate.authenticate_now(self.accepted_request())
        assert now is None or now == identity

    def test_services_are_services_not_started(self) -> None:
        services = self.scheme.services()
        assert isinstance(services, list)
        for service in services:
            assert IService.providedBy(service)
            assert not service.running
