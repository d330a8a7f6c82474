"""The gate's signed verdict: what a qa run checked, signed with a private key that never enters the
tracking store or an artifact, and verified against public keys from config (`trust.signers`),
never against anything read from the store.

Ed25519 through `cryptography` (already installed with MLflow, no service to reach): a signature
is 64 bytes over the statement's canonical JSON, a key is 32 bytes, and verifying costs tens of
microseconds. OpenSSF `model-signing` was the other candidate: its bundles sign a directory's
files and, in its default mode, need Sigstore's online services; the statement here must also
bind the qa run, its verdict and the config and code that produced it, and the files' digest is
already computed once (training/model_io.files_digest).

A key file holds the raw 32-byte private key, base64, mode 0600 (`load_or_create`); a public
key is written `ed25519:<base64>` and named by its id `<first 16 hex digits of its sha256>`.
The same keys seal a step's unpickled artifacts (`seal`/`unseal`: preprocess's transformer).

May import: `mlpipe.errors`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from mlpipe.errors import ConfigError

FORMAT = "mlpipe.verdict/1"
ARTIFACTS_FORMAT = "mlpipe.artifacts/1"
PREFIX = "ed25519:"


class VerdictError(Exception):
    """A verdict that proves nothing: its reason, one line."""


# -- keys ---------------------------------------------------------------------------------------

def public_text(key: Ed25519PublicKey) -> str:
    return PREFIX + base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def parse_public(text: str, where: str) -> Ed25519PublicKey:
    """`ed25519:<base64 of 32 bytes>`, else a ConfigError naming `where` (the config key)."""
    body = str(text).strip()
    try:
        if not body.startswith(PREFIX):
            raise ValueError(f"does not start with {PREFIX}")
        raw = base64.b64decode(body[len(PREFIX):], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}={body[:60]!r} is not a public key ({exc}); expected {PREFIX}<base64>, as "
                          "`python -m mlpipe.registry.keys show` prints it") from None


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(Path(path).read_text().strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"trust.signing_key={path}: not a readable gate key ({exc})") from None


def create_private(path: Path, content: bytes) -> bool:
    """Writes `content` to `path` (mode 0600, its folder made 0700) unless the file exists; True
    when this call made it. Two processes creating it at once end with one file: it is written
    aside and linked into place only if absent. OSError when the folder is not writable."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def load_or_create(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The private key in `path`, created (mode 0600, folder 0700) when there is none: (key, created).
    Two processes creating it at once end with one key (`create_private`)."""
    path = Path(path).expanduser()
    if path.exists():
        return load_private(path), False
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        created = create_private(path, base64.b64encode(raw) + b"\n")
    except OSError as exc:
        raise ConfigError(f"trust.signing_key={path}: there is no gate key and none can be created there "
                          f"({exc.strerror or exc}); set trust.signing_key (or $MLPIPE_GATE_KEY) to the gate's key "
                          "file, or to a writable path for a new one") from None
    if created:
        path.with_name(path.name + ".pub").write_text(public_text(key.public_key()) + "\n")
        return key, True
    return load_private(path), False


@dataclass(frozen=True)
class Keyring:
    """The public keys whose verdicts count, by id, and the ids revoked."""

    trusted: dict
    revoked: frozenset

    @classmethod
    def from_texts(cls, signers: list[str], revoked: list[str]) -> "Keyring":
        keys = [parse_public(text, f"trust.signers[{i}]") for i, text in enumerate(signers)]
        gone = {_revoked_id(text, i) for i, text in enumerate(revoked)}
        return cls({key_id(k): k for k in keys}, frozenset(gone))

    def texts(self) -> list[str]:
        return [public_text(k) for k in self.trusted.values()]


def _revoked_id(text: str, i: int) -> str:
    """A revoked key, given by its public key or its id."""
    text = str(text).strip()
    if text.startswith(PREFIX):
        return key_id(parse_public(text, f"trust.revoked[{i}]"))
    if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return text
    raise ConfigError(f"trust.revoked[{i}]={text[:60]!r}: expected a key id (16 hex digits) or {PREFIX}<base64>")


# -- verdicts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What the gate vouches for: these files (`digest`) of this logged model, checked by this qa
    run in this experiment, with this outcome, under this config and this code."""

    model_uri: str
    digest: str
    qa_run_id: str
    experiment_id: str
    passed: bool
    failed_checks: str
    config_digest: str
    code_digest: str
    signed_at: str
    key: str = ""  # the signing key's id (set by sign)


def sign(verdict: Verdict, key: Ed25519PrivateKey) -> tuple[str, str]:
    """(statement, signature): the canonical JSON and its Ed25519 signature, base64."""
    fields = asdict(verdict) | {"key": key_id(key.public_key())}
    return _signed(FORMAT, fields, key)


def verify(statement: str, signature: str, keyring: Keyring) -> Verdict:
    """The verdict a statement states, when `signature` is a trusted, unrevoked key's signature of
    exactly these bytes; else VerdictError with the reason."""
    fields = _checked(FORMAT, statement, signature, keyring)
    try:
        return Verdict(**fields)
    except TypeError as exc:
        raise VerdictError(f"the verdict cannot be read ({str(exc)[:120]})") from None


def seal(run_id: str, files: dict[str, str], signed_at: str, key: Ed25519PrivateKey) -> tuple[str, str]:
    """(statement, signature) of a run's artifacts: `files` maps each artifact path to its sha256."""
    return _signed(ARTIFACTS_FORMAT, {"run_id": run_id, "files": dict(sorted(files.items())), "signed_at": signed_at,
                                      "key": key_id(key.public_key())}, key)


def unseal(statement: str, signature: str, keyring: Keyring, run_id: str) -> dict[str, str]:
    """The artifact digests a trusted key sealed for run `run_id`; else VerdictError."""
    fields = _checked(ARTIFACTS_FORMAT, statement, signature, keyring)
    if fields.get("run_id") != run_id or not isinstance(fields.get("files"), dict):
        raise VerdictError(f"the seal was signed for run {fields.get('run_id')}, not {run_id}")
    return fields["files"]


def _signed(fmt: str, fields: dict, key: Ed25519PrivateKey) -> tuple[str, str]:
    stated = json.dumps({"format": fmt} | fields, sort_keys=True, separators=(",", ":"))
    return stated, base64.b64encode(key.sign(stated.encode())).decode()


def _checked(fmt: str, statement: str, signature: str, keyring: Keyring) -> dict:
    """The fields of a `fmt` statement whose signature a trusted, unrevoked key made."""
    what = "verdict" if fmt == FORMAT else "seal"
    try:
        fields = json.loads(statement)
        if not isinstance(fields, dict) or fields.pop("format", None) != fmt:
            raise ValueError(f"not a {fmt} statement")
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, TypeError) as exc:
        raise VerdictError(f"the {what} cannot be read ({str(exc)[:120]})") from None
    signer = fields.get("key") or "(none)"
    if signer in keyring.revoked:
        raise VerdictError(f"the {what} is signed by key {signer}, which is revoked (trust.revoked)")
    public = keyring.trusted.get(signer)
    if public is None:
        raise VerdictError(f"the {what} is signed by key {signer}, not one of trust.signers "
                           f"({', '.join(keyring.trusted) or 'none'})")
    try:
        public.verify(raw, statement.encode())
    except InvalidSignature:
        raise VerdictError(f"the {what}'s signature does not match its statement (key {signer}): "
                           "it was changed after it was signed") from None
    return fields


# -- from config --------------------------------------------------------------------------------

def gate_key(tcfg, step: str) -> Ed25519PrivateKey:
    """`trust.signing_key`, created on first use with a line on stderr saying where and what to do."""
    import sys

    path = Path(str(tcfg["signing_key"])).expanduser()
    key, created = load_or_create(path)
    if created:
        public = key.public_key()
        print(f"[mlpipe] {step}: created the gate's signing key {path} (mode 0600; id {key_id(public)}, public key "
              f"in {path.name}.pub). Keep it private: whoever holds it can vouch for models. Where models are served "
              f"from another machine, trust.signers=[{public_text(public)}]", file=sys.stderr)
    return key


def now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def keyring(tcfg) -> Keyring:
    """The trusted keys of the `trust` config group: `signers`, or when that is empty the public key
    of `signing_key` on this machine (its .pub file, else derived from the key)."""
    signers = [str(s) for s in (tcfg["signers"] or [])]
    if not signers:
        path = Path(str(tcfg["signing_key"])).expanduser()
        public = path.with_name(path.name + ".pub")
        if public.is_file():
            signers = [public.read_text().strip()]
        elif path.is_file():
            signers = [public_text(load_private(path).public_key())]
        else:
            raise ConfigError(f"no trusted signers: trust.signers is empty and there is no gate key at {path} (qa "
                              "creates it on first use); set trust.signers to the public key of the gate that "
                              "signs your models' verdicts")
    return Keyring.from_texts(signers, [str(r) for r in (tcfg["revoked"] or [])])
