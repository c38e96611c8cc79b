"""Built-in auth scheme: ``jwt``."""

from yatagarasu.auth.jwt import JwtSchemeFactory

jwt = JwtSchemeFactory()
