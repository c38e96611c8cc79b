"""Built-in auth scheme: ``signed_url``."""

from yatagarasu.auth.signed_url import SignedUrlSchemeFactory

signed_url = SignedUrlSchemeFactory()
