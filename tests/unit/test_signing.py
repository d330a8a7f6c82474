"""mlpipe/signing.py: verdicts signed and verified, keys made, read, rotated and revoked,
and mlpipe/registry/keys.py, the command that shows and makes them."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mlpipe.errors import ConfigError
from mlpipe import signing
from mlpipe.registry import keys

ROOT = Path(__file__).resolve().parents[2]
VERDICT = signing.Verdict(model_uri="models:/m-1", digest="sha256:ab", qa_run_id="r1", experiment_id="1", passed=True,
                          failed_checks="", config_digest="c", code_digest="d", signed_at="2026-12-07T00:00:00+00:00")


def _ring(*trusted, revoked=()):
    return signing.Keyring.from_texts([signing.public_text(k.public_key()) for k in trusted],
                                      [signing.key_id(k.public_key()) for k in revoked])


def test_a_verdict_verifies_with_its_key_and_says_what_was_signed():
    key = Ed25519PrivateKey.generate()
    statement, signature = signing.sign(VERDICT, key)
    verdict = signing.verify(statement, signature, _ring(key))
    assert verdict == replace(VERDICT, key=signing.key_id(key.public_key()))
    assert json.loads(statement)["format"] == signing.FORMAT


def test_a_changed_statement_an_unknown_key_and_a_revoked_key_prove_nothing():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    statement, signature = signing.sign(VERDICT, key)
    edited = statement.replace("sha256:ab", "sha256:ff")
    with pytest.raises(signing.VerdictError, match="signature does not match its statement .*changed after it was signed"):
        signing.verify(edited, signature, _ring(key))
    with pytest.raises(signing.VerdictError, match=rf"signed by key {signing.key_id(key.public_key())}, not one of "
                                                   rf"trust.signers \({signing.key_id(other.public_key())}\)"):
        signing.verify(statement, signature, _ring(other))
    with pytest.raises(signing.VerdictError, match="which is revoked \\(trust.revoked\\)"):
        signing.verify(statement, signature, _ring(key, other, revoked=[key]))
    # a statement re-signed by another key under the first key's id: the signature fails
    forged = json.loads(statement) | {"digest": "sha256:ff"}
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    with pytest.raises(signing.VerdictError, match="does not match"):
        signing.verify(text, base64.b64encode(other.sign(text.encode())).decode(), _ring(key, other))
    for bad in ("{", json.dumps({"format": "x"})):
        with pytest.raises(signing.VerdictError, match="the verdict cannot be read"):
            signing.verify(bad, signature, _ring(key))


def test_rotation_both_keys_count_until_the_old_one_is_revoked():
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    by_old, by_new = signing.sign(VERDICT, old), signing.sign(VERDICT, new)
    both = _ring(old, new)
    assert signing.verify(*by_old, both).key == signing.key_id(old.public_key())
    assert signing.verify(*by_new, both).key == signing.key_id(new.public_key())
    retired = _ring(new, revoked=[old])
    assert signing.verify(*by_new, retired).passed
    with pytest.raises(signing.VerdictError, match="revoked"):
        signing.verify(*by_old, retired)


def test_a_key_is_created_once_private_and_read_back(tmp_path):
    path = tmp_path / "keys" / "gate.key"
    with ThreadPoolExecutor(8) as pool:  # eight processes' worth of first uses at once: one key
        made = list(pool.map(lambda _: signing.load_or_create(path), range(8)))
    assert sum(created for _, created in made) == 1
    assert len({signing.key_id(k.public_key()) for k, _ in made}) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert (tmp_path / "keys" / "gate.key.pub").read_text().strip() == signing.public_text(made[0][0].public_key())
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_the_keyring_from_config_defaults_to_the_local_key_and_names_bad_keys(tmp_path):
    path = tmp_path / "gate.key"
    with pytest.raises(ConfigError, match=rf"no trusted signers: trust.signers is empty and there is no gate key at {path}"):
        signing.keyring({"signing_key": str(path), "signers": [], "revoked": []})
    key, _ = signing.load_or_create(path)
    ring = signing.keyring({"signing_key": str(path), "signers": [], "revoked": []})
    assert list(ring.trusted) == [signing.key_id(key.public_key())]
    with pytest.raises(ConfigError, match=r"trust.signers\[0\]='ssh-ed25519 AAAA' is not a public key .*expected "
                                           r"ed25519:<base64>"):
        signing.keyring({"signing_key": str(path), "signers": ["ssh-ed25519 AAAA"], "revoked": []})
    with pytest.raises(ConfigError, match=r"trust.revoked\[0\]='nope': expected a key id"):
        signing.keyring({"signing_key": str(path), "signers": [], "revoked": ["nope"]})


def test_the_keys_command_makes_and_shows_a_key_and_never_overwrites_one(tmp_path):
    path = tmp_path / "next.key"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    made = subprocess.run([sys.executable, "-m", "mlpipe.registry.keys", "new", str(path)], capture_output=True,
                          text=True, env=env)
    assert made.returncode == 0 and made.stdout.startswith(f"created {path} (mode 0600) and next.key.pub: ed25519:")
    shown = subprocess.run([sys.executable, "-m", "mlpipe.registry.keys", "show", str(path)], capture_output=True,
                           text=True, env=env)
    public = signing.public_text(signing.load_private(path).public_key())
    assert shown.stdout.strip() == f"{public}  id {signing.key_id(signing.load_private(path).public_key())}  ({path})"
    again = subprocess.run([sys.executable, "-m", "mlpipe.registry.keys", "new", str(path)], capture_output=True,
                           text=True, env=env)
    assert again.returncode == 1 and again.stderr.strip() == (f"error: {path} exists: a key is never overwritten; "
                                                             "choose another file")
    assert keys.show(Path(f"{path}.pub")).startswith(public)
