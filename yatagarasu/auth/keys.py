"""
Verification keys and the algorithms each may be used with.

The accepted algorithm always comes from the key (and the configuration), never from the
token alone: a secret only verifies HS*, an RSA key RS*/PS*, an EC key the ES* of its curve,
an Ed25519/Ed448 key EdDSA. ``alg: none`` is never accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from yatagarasu.errors import ConfigError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EDDSA_ALGORITHMS = frozenset({"EdDSA"})
_EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
SUPPORTED_ALGORITHMS = (
    HMAC_ALGORITHMS | RSA_ALGORITHMS | EDDSA_ALGORITHMS | frozenset(_EC_BY_CURVE.values())
)


@dataclass(frozen=True)
class VerificationKey:
    """
    A key tokens may be verified with.

    :ivar kid: its key id (``None``: tried for tokens without a ``kid``).
    :ivar algorithms: the algorithms it may verify.
    :ivar key: what PyJWT verifies with (secret bytes or a public key object).
    """

    kid: str | None
    algorithms: frozenset[str]
    key: Any


def algorithms_of(public_key: Any) -> frozenset[str]:
    """
    :param public_key: a ``cryptography`` public key.
    :returns: the JWS algorithms that key type can verify (empty when unsupported).
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = _EC_BY_CURVE.get(public_key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return EDDSA_ALGORITHMS
    return frozenset()


def _restrict(available: frozenset[str], algorithm: str | None, path: str) -> frozenset[str]:
    if algorithm is None:
        return available
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise ConfigError(path, f"unsupported algorithm {algorithm!r}")
    if algorithm not in available:
        raise ConfigError(path, f"{algorithm} cannot be used with this kind of key")
    return frozenset({algorithm})


def public_key_from_file(
    file_path: str, kid: str | None, algorithm: str | None, path: str, algorithm_path: str
) -> VerificationKey:
    """
    Load a PEM public key once (at start-up or reload).

    :param file_path: the PEM file.
    :param kid: its key id.
    :param algorithm: the configured algorithm, if any.
    :param path: dotted key path of the file setting, for errors.
    :param algorithm_path: dotted key path of the algorithm setting, for errors.
    :returns: the key.
    :raises ConfigError: unreadable file, not a public key, or a mismatched algorithm.
    """
    try:
        with open(file_path, "rb") as f:
            public_key = load_pem_public_key(f.read())
    except OSError as e:
        raise ConfigError(path, f"cannot read {file_path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(path, f"{file_path} is not a PEM public key: {e}") from None
    available = algorithms_of(public_key)
    if not available:
        raise ConfigError(path, f"{file_path}: unsupported key type")
    return VerificationKey(kid, _restrict(available, algorithm, algorithm_path), public_key)


def secret_key(secret: str, kid: str | None, algorithm: str | None, path: str) -> VerificationKey:
    """
    :param secret: the shared secret.
    :param kid: its key id.
    :param algorithm: the configured algorithm (default HS256; must be HS*).
    :param path: dotted key path of the algorithm setting, for errors.
    :returns: the key.
    :raises ConfigError: when the algorithm is not an HMAC one, or the secret looks like a PEM.
    """
    if "-----BEGIN" in secret:
        raise ConfigError(path, "a PEM key is not a shared secret (use a key path setting)")
    algorithms = _restrict(HMAC_ALGORITHMS, algorithm or "HS256", path)
    return VerificationKey(kid, algorithms, secret.encode("utf-8"))
