"""Plugin dropin: the built-in ``openfga`` authorizer (``authorization.type: openfga``)."""

from yatagarasu.auth.openfga import OpenFgaAuthorizerFactory

openfga = OpenFgaAuthorizerFactory()
