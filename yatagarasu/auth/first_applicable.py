"""
Several auth schemes on one bucket (``auth.schemes: [jwt, signed_url]``): the first scheme
that applies to a request decides.

A scheme *applies* when the request carries its kind of credentials
(:class:`IApplicableAuthScheme`: a bearer token for ``jwt``, a ``signature`` parameter for
``signed_url``). Its answer is final: present but bad credentials are a 401 from that scheme,
never a reason to try the next one. A scheme that cannot tell is asked to authenticate, and
is passed over only when it answers ``AuthenticationRequired`` (no credentials). When no
scheme applies, the request gets the usual 401 challenge.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail
from twisted.web.iweb import IRequest
from zope.interface import implementer

from yatagarasu.errors import AuthenticationRequired
from yatagarasu.interfaces import IApplicableAuthScheme, IAuthScheme, IImmediateAuthScheme
from yatagarasu.values import Identity


@implementer(IImmediateAuthScheme, IApplicableAuthScheme)
class FirstApplicableScheme:
    """
    :param schemes: the bucket's schemes, in configured order (two or more).
    """

    def __init__(self, schemes: Sequence[IAuthScheme]) -> None:
        self._schemes = tuple(schemes)
        self.name = "+".join(s.name for s in self._schemes)

    def services(self) -> list[IService]:
        """:returns: the services of every scheme."""
        return [service for scheme in self._schemes for service in scheme.services()]

    def applies(self, request: IRequest) -> bool:
        """:returns: whether one of the schemes surely applies."""
        return any(
            IApplicableAuthScheme.providedBy(s) and s.applies(request) for s in self._schemes
        )

    def authenticate_now(self, request: IRequest) -> Identity | None:
        """
        The identity the scheme that applies knows at once; ``None`` as soon as a scheme that
        cannot tell whether it applies comes first (``authenticate`` decides then).
        """
        for scheme in self._schemes:
            if not IApplicableAuthScheme.providedBy(scheme):
                return None
            if scheme.applies(request):
                immediate = IImmediateAuthScheme(scheme, None)
                return immediate.authenticate_now(request) if immediate is not None else None
        return None

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        """
        The answer of the first scheme that applies; the request's first Deferred is returned
        as it is when that scheme is known to apply (a refusal is not passed on).
        """
        for index, scheme in enumerate(self._schemes):
            if IApplicableAuthScheme.providedBy(scheme):
                if scheme.applies(request):
                    return scheme.authenticate(request)
                continue
            return Deferred.fromCoroutine(self._trying(request, index))
        return fail(self._refusal())

    async def _trying(self, request: IRequest, index: int) -> Identity:
        for scheme in self._schemes[index:]:
            if IApplicableAuthScheme.providedBy(scheme):
                if scheme.applies(request):
                    return await scheme.authenticate(request)
                continue
            try:
                return await scheme.authenticate(request)
            except AuthenticationRequired:
                continue
        raise self._refusal()

    def _refusal(self) -> AuthenticationRequired:
        names = " or ".join(s.name for s in self._schemes)
        return AuthenticationRequired(f"credentials are required ({names})")
