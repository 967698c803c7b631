"""Finding 6: a bundle is served only when signed by a trusted key, whole, and confined to itself."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain_lm.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, build_bundle, sign_bundle, verify_bundle, write_manifest
from domain_lm.signing import key_id

OWNER = Ed25519PrivateKey.generate()
TRUSTED = {key_id(OWNER.public_key()): OWNER.public_key()}


@pytest.fixture()
def bundle(tmp_path, tiny_model_dir) -> Path:
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    return build_bundle(tmp_path / "bundle", tpl, model=tiny_model_dir, signing_key=OWNER).root


def test_signed_bundle_passes(bundle):
    assert verify_bundle(bundle, public_keys=TRUSTED).signed_by == key_id(OWNER.public_key())


def test_edited_weights_with_a_rewritten_manifest_are_refused(bundle):
    weights = bundle / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_manifest(bundle)  # the attacker re-hashes everything: the manifest is consistent again
    with pytest.raises(BundleError, match="does not match its contents"):
        verify_bundle(bundle, public_keys=TRUSTED)


def test_a_bundle_re_signed_by_another_key_is_refused(bundle):
    sign_bundle(bundle, Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="not among the trusted keys"):
        verify_bundle(bundle, public_keys=TRUSTED)


def test_unsigned_bundles_are_refused_unless_allowed(bundle):
    (bundle / SIGNATURE_NAME).unlink()
    with pytest.raises(BundleError, match="is not signed"):
        verify_bundle(bundle, public_keys=TRUSTED)
    assert verify_bundle(bundle, allow_unsigned=True).signed_by is None
    sign_bundle(bundle, OWNER)
    with pytest.raises(BundleError, match="no trusted public key"):
        verify_bundle(bundle)  # signed, but the server was given no key to check it with


def test_garbage_signature_file_is_refused(bundle):
    (bundle / SIGNATURE_NAME).write_text('{"algorithm": "ed25519", "key_id": "x", "signature": "%%%"}')
    with pytest.raises(BundleError, match="not a valid signature file"):
        verify_bundle(bundle, public_keys=TRUSTED)


def test_a_fifo_is_refused_without_blocking(bundle):
    os.mkfifo(bundle / "model" / "pipe.bin")
    result: list[BaseException | None] = []

    def check() -> None:
        try:
            verify_bundle(bundle, public_keys=TRUSTED)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            result.append(e)

    t = threading.Thread(target=check, daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(10)
    assert not t.is_alive(), "verification blocked on a FIFO"
    assert isinstance(result[0], BundleError) and "not a regular file" in str(result[0]) and time.perf_counter() - t0 < 10


def test_symlinks_are_refused(bundle, tmp_path):
    (tmp_path / "outside.json").write_text("{}")
    (bundle / "model" / "extra.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(BundleError, match="symbolic link"):
        verify_bundle(bundle, public_keys=TRUSTED)


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "../../etc"),
        ("model", "/etc"),
        ("templates", "../outside"),
        ("adapters", {"x": "../../x"}),
        ("adapters", {"../evil": "adapters/evil"}),
    ],
)
def test_paths_in_bundle_json_stay_inside_the_bundle(bundle, tmp_path, field, value):
    """Even a signer cannot point the service outside the bundle."""
    meta = json.loads((bundle / "bundle.json").read_text())
    meta[field] = value
    (bundle / "bundle.json").write_text(json.dumps(meta))
    write_manifest(bundle)
    sign_bundle(bundle, OWNER)
    with pytest.raises(BundleError, match="inside the bundle|outside the bundle|plain names"):
        verify_bundle(bundle, public_keys=TRUSTED)


def test_manifest_cannot_list_the_signature_or_escape(bundle):
    text = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(text + f"{'0' * 64}  {SIGNATURE_NAME}\n")
    with pytest.raises(BundleError, match="not a valid entry"):
        verify_bundle(bundle, public_keys=TRUSTED, allow_unsigned=True)
