"""
The test kit for plugin authors (installed with yatagarasu; needs neither pytest nor moto).

- :class:`CacheLayerContract`, :class:`AuthSchemeContract` and :class:`AuthorizerContract`:
  mixins holding the promises of ``ICacheLayer``, ``IAuthScheme`` and ``IAuthorizer`` as
  tests; subclass one beside ``twisted.trial``'s ``TestCase`` or in a pytest class run with
  pytest-twisted (see ``docs/plugins.md``).
- :func:`fake_request`, :func:`result_of`, :func:`sample_entry`, :func:`body_of`: requests,
  fired Deferreds and cache entries without a server.

    from yatagarasu.testing import fake_request, result_of

    identity = result_of(scheme.authenticate(fake_request(headers={"X-API-Key": "k1"})))
"""

from yatagarasu.testing.auth_scheme import AuthSchemeContract
from yatagarasu.testing.authorizer import AuthorizerContract
from yatagarasu.testing.cache_layer import FAR_FUTURE, CacheLayerContract, body_of, sample_entry
from yatagarasu.testing.deferreds import deferred_test, result_of
from yatagarasu.testing.requests import fake_request

__all__ = [
    "FAR_FUTURE",
    "AuthSchemeContract",
    "AuthorizerContract",
    "CacheLayerContract",
    "body_of",
    "deferred_test",
    "fake_request",
    "result_of",
    "sample_entry",
]
