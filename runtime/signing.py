"""Ed25519 signatures of bundles (the `cryptography` package, imported only when a key is given).

The signature covers manifest.json's bytes as stored; the manifest hashes every file, so a
signed manifest pins the whole bundle. It lives beside the manifest as `manifest.json.sig`
(64 raw bytes). Keys are PEM files, as OpenSSL writes them:

    openssl genpkey -algorithm ed25519 -out signing.pem        # private: stays with the builder
    openssl pkey -in signing.pem -pubout -out signing.pub      # public: goes to servers and edges
"""

from pathlib import Path

from runtime.errors import BundleError

SIGNATURE_NAME = "manifest.json.sig"
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 16 * 1024


def _serialization():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as error:
        raise BundleError("bundle signatures need the cryptography package: pip install cryptography") from error
    return serialization, ed25519, InvalidSignature


def _key_bytes(path) -> bytes:
    try:
        with open(str(path), "rb") as stream:
            data = stream.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise BundleError("cannot read key {}: {}".format(path, error.strerror or error)) from error
    if len(data) > MAX_KEY_FILE_BYTES:
        raise BundleError("key {} is over {} bytes: not a PEM key".format(path, MAX_KEY_FILE_BYTES))
    return data


def load_private_key(path):
    serialization, ed25519, _ = _serialization()
    try:
        key = serialization.load_pem_private_key(_key_bytes(path), password=None)
    except (ValueError, TypeError) as error:
        raise BundleError("{} is not an unencrypted PEM private key ({})".format(path, error)) from error
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError("{} is not an Ed25519 key (openssl genpkey -algorithm ed25519)".format(path))
    return key


def load_public_key(path):
    serialization, ed25519, _ = _serialization()
    try:
        key = serialization.load_pem_public_key(_key_bytes(path))
    except (ValueError, TypeError) as error:
        raise BundleError("{} is not a PEM public key ({})".format(path, error)) from error
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError("{} is not an Ed25519 public key (openssl pkey -in KEY -pubout)".format(path))
    return key


def sign_manifest(directory: Path, private_key_path) -> Path:
    """Write `manifest.json.sig` for a bundle directory's manifest; its path."""
    from runtime.bundle import MANIFEST_NAME

    key = load_private_key(private_key_path)
    signature = directory / SIGNATURE_NAME
    signature.write_bytes(key.sign((directory / MANIFEST_NAME).read_bytes()))
    return signature


def verify_signature(directory: Path, manifest_bytes: bytes, public_key_path) -> None:
    """Refuse a bundle whose manifest is unsigned or not signed by the trusted key."""
    path = directory / SIGNATURE_NAME
    if not path.is_file():
        raise BundleError("{} is not signed (no {}): a trusted key was given, so it is refused".format(
            directory, SIGNATURE_NAME))
    with open(str(path), "rb") as stream:
        signature = stream.read(SIGNATURE_BYTES + 1)  # one byte more tells a longer file apart
    check_signature(signature, manifest_bytes, public_key_path, directory)


def check_signature(signature: bytes, manifest_bytes: bytes, public_key_path, where) -> None:
    """Refuse a manifest whose signature is not the trusted key's (`where` names the bundle)."""
    _, _, invalid = _serialization()
    key = load_public_key(public_key_path)
    try:
        if len(signature) != SIGNATURE_BYTES:
            raise invalid()
        key.verify(signature, manifest_bytes)
    except invalid:
        raise BundleError("{}'s signature does not verify with {}: the manifest was changed after signing, or "
                          "another key signed it".format(where, public_key_path)) from None
