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

from collections.abc import Callable, Sequence

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
        #: per scheme, in order: its ``applies`` (``None``: it cannot tell) and its
        #: ``authenticate_now`` (``None``: it has no fast path), looked up once
        self._tests: tuple[_Test, ...] = tuple(
            (
                s,
                s.applies if IApplicableAuthScheme.providedBy(s) else None,
                s.authenticate_now if IImmediateAuthScheme.providedBy(s) else None,
            )
            for s in self._schemes
        )

    def services(self) -> list[IService]:
        """:returns: the services of every scheme."""
        return [service for scheme in self._schemes for service in scheme.services()]

    def applies(self, request: IRequest) -> bool:
        """:returns: whether one of the schemes surely applies."""
        return any(applies is not None and applies(request) for _, applies, _ in self._tests)

    def authenticate_now(self, request: IRequest) -> Identity | None:
        """
        The identity the scheme that applies knows at once; ``None`` as soon as a scheme that
        cannot tell whether it applies comes first (``authenticate`` decides then).
        """
        for _, applies, now in self._tests:
            if applies is None:
                return None
            if applies(request):
                return now(request) if now is not None else None
        return None

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        """
        The answer of the first scheme that applies, as that scheme gives it (a refusal is
        final); schemes that cannot tell whether they apply are asked in turn from the first
        such one on.
        """
        for index, (scheme, applies, _) in enumerate(self._tests):
            if applies is None:
                return Deferred.fromCoroutine(self._trying(request, index))
            if applies(request):
                return scheme.authenticate(request)
        return fail(self._refusal())

    async def _trying(self, request: IRequest, index: int) -> Identity:
        for scheme, applies, _ in self._tests[index:]:
            if applies is not None:
                if applies(request):
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


#: a scheme, its ``applies`` and its ``authenticate_now`` (when it provides them)
_Test = tuple[
    IAuthScheme,
    Callable[[IRequest], bool] | None,
    Callable[[IRequest], Identity | None] | None,
]
