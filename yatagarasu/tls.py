"""Server-side TLS options from PEM files, and a holder a hot reload can swap them in."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL.crypto import X509, PKey
from OpenSSL.SSL import Connection
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from zope.interface import implementer

from yatagarasu.config.schema import TLSConfig
from yatagarasu.errors import ConfigError


def server_tls_options(config: TLSConfig, path: str = "server.tls") -> CertificateOptions:
    """
    Load a certificate chain and its private key for serving HTTPS.

    :param config: the ``server.tls`` section.
    :param path: dotted key path of that section, for errors.
    :returns: TLS options (TLS 1.2 or newer) for ``TLSMemoryBIOFactory``.
    :raises ConfigError: when a file cannot be read or parsed, or key and certificate differ.
    """
    try:
        with open(config.cert_path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}.cert_path", f"cannot load certificates: {e}") from None
    try:
        with open(config.key_path, "rb") as f:
            key = load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}.key_path", f"cannot load private key: {e}") from None
    if chain[0].public_key() != key.public_key():
        raise ConfigError(f"{path}.key_path", "private key does not match the certificate")
    return CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=X509.from_cryptography(chain[0]),
        extraCertChain=[X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    What ``TLSMemoryBIOFactory`` asks for each new connection: the current options.

    A hot reload replaces :attr:`options` (certificate and key files read again); connections
    already open keep the TLS session they negotiated.

    :param options: the options new connections get.
    """

    def __init__(self, options: CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: object) -> Connection:
        """:returns: a server connection made with the current options."""
        return self.options.serverConnectionForTLS(tlsProtocol)  # type: ignore[arg-type]
