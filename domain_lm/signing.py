"""Ed25519 signatures for model bundles (``cryptography``): keys, signing, verifying.

A bundle's ``MANIFEST.sha256`` lists the SHA-256 of every file, so signing the manifest signs the
bundle. The signature sits beside it in ``MANIFEST.sha256.sig`` (JSON: algorithm, key id, base64
signature). Keys are PEM files: the private key (PKCS#8, mode 0600, optionally encrypted with a
passphrase) stays with whoever builds bundles; the public key goes to every server, which refuses
a bundle not signed by one of its trusted keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from domain_lm.errors import DomainLMError

ALGORITHM = "ed25519"
#: Environment variable holding the passphrase of an encrypted private key.
PASSPHRASE_ENV = "DOMAIN_LM_SIGNING_PASSPHRASE"


class SigningError(DomainLMError):
    """A key cannot be read, or a signature is missing, malformed or wrong."""


@dataclass(frozen=True)
class Signature:
    key_id: str
    signature: bytes

    def to_json(self) -> str:
        return json.dumps({"algorithm": ALGORITHM, "key_id": self.key_id, "signature": base64.b64encode(self.signature).decode()}) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "Signature":
        try:
            data = json.loads(text)
            if data.get("algorithm") != ALGORITHM:
                raise ValueError(f"algorithm {data.get('algorithm')!r} is not {ALGORITHM}")
            return cls(str(data["key_id"]), base64.b64decode(data["signature"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SigningError(f"{source} is not a valid signature file ({e}); do not serve this bundle.") from None


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | Path, public_path: str | Path, passphrase: bytes | None = None) -> str:
    """Write a new Ed25519 key pair (private 0600, created exclusively: an existing key is never replaced)."""
    private = Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private_path, public_path = Path(private_path), Path(public_path)
    for p in (private_path, public_path):
        if p.exists():
            raise SigningError(f"{p} already exists; keys are never overwritten (move it away first).")
        p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(private.public_key())


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    if passphrase is None and os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV].encode()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
    except (OSError, ValueError, TypeError) as e:
        raise SigningError(f"Cannot read the signing key {path}: {e}. (An encrypted key needs {PASSPHRASE_ENV}.)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key (make one with `domain-lm bundle keygen`).")
    return key


def load_public_keys(paths: list[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id, from PEM files or directories of ``*.pem`` / ``*.pub`` files."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(x for x in p.iterdir() if x.suffix in (".pem", ".pub")) if p.is_dir() else [p]
    keys: dict[str, Ed25519PublicKey] = {}
    for f in files:
        try:
            key = serialization.load_pem_public_key(f.read_bytes())
        except (OSError, ValueError) as e:
            raise SigningError(f"Cannot read the public key {f}: {e}.") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"{f} is not an Ed25519 public key.")
        keys[key_id(key)] = key
    return keys


def sign(data: bytes, private: Ed25519PrivateKey) -> Signature:
    return Signature(key_id(private.public_key()), private.sign(data))


def verify(data: bytes, signature: Signature, trusted: dict[str, Ed25519PublicKey], what: str) -> str:
    """The key id that signed ``data``; ``SigningError`` if no trusted key did."""
    key = trusted.get(signature.key_id)
    if key is None:
        raise SigningError(
            f"{what} is signed by key {signature.key_id}, which is not among the trusted keys ({', '.join(sorted(trusted)) or 'none'}). "
            "Do not serve it; if the key is yours, add its public key with --public-key."
        )
    try:
        key.verify(signature.signature, data)
    except InvalidSignature:
        raise SigningError(
            f"{what} has a signature that does not match its contents: it was changed after signing. Do not serve it."
        ) from None
    return signature.key_id
