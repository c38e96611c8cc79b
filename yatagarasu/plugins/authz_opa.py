"""Plugin dropin: the built-in ``opa`` authorizer (``buckets[].authorization.type: opa``)."""

from yatagarasu.auth.opa import OpaAuthorizerFactory

opa = OpaAuthorizerFactory()
