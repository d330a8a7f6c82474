"""Labels bound to real answers: each 200 answer's `X-Feedback-Token` is an HMAC of its request id
with the server's secret, and `/feedback` takes one label set per answer, with that token, one
label per row of the request, each label a short scalar (docs/serving.md#feedback).

The secret (serve.feedback.secret_file: 32 random bytes, mode 0600) is made on first use; every
server process writing one record store reads the same file, so any of them can check a token
another one issued.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from mlpipe import signing

TOKEN_HEADER = "X-Feedback-Token"


class Refused(Exception):
    """A label set the server does not take: HTTP status, MLflow-style error code, one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def load_secret(path: str | Path) -> bytes:
    """The secret in `path`, created (32 random bytes, hex, mode 0600) when there is none; two
    processes creating it at once end with one secret (linked into place only if absent)."""
    path = Path(path).expanduser()
    if not path.exists():
        signing.create_private(path, os.urandom(32).hex().encode() + b"\n")
    text = path.read_text().strip()
    if len(text) < 32:
        raise ValueError(f"serve.feedback.secret_file={path}: holds {len(text)} characters; expected a secret of 32 "
                         "or more (delete it to have a new one made)")
    return text.encode()


def token(secret: bytes, request_id: str) -> str:
    return hmac.new(secret, request_id.encode(), hashlib.sha256).hexdigest()[:32]


def check_token(secret: bytes, request_id: str, given: Any) -> None:
    if not isinstance(given, str) or not hmac.compare_digest(token(secret, request_id), given):
        what = "no token" if not given else "a token that is not this answer's"
        raise Refused(403, "PERMISSION_DENIED", f"feedback for {request_id!r} with {what}: send the answer's "
                                                f"{TOKEN_HEADER} as \"token\" (or as the {TOKEN_HEADER} header)")


def parse(payload: Any, header_token: str | None) -> tuple[str, Any, Any]:
    """(request_id, token, label) of a /feedback body, else Refused 400 naming what to send."""
    expected = f'expected JSON {{"request_id": "<X-Request-Id>", "token": "<{TOKEN_HEADER}>", "label": ...}}'
    if not isinstance(payload, dict) or "request_id" not in payload or "label" not in payload:
        raise Refused(400, "BAD_REQUEST", expected)
    if not isinstance(payload["request_id"], str):
        raise Refused(400, "BAD_REQUEST", f"request_id must be a string; {expected}")
    return payload["request_id"], payload.get("token", header_token), payload["label"]


def labels_for(label: Any, rows: int, max_chars: int) -> list[Any]:
    """The label set as one scalar per row of the request (`rows`), else Refused 400: a list of
    exactly `rows` labels, or a single label for a one-row request; each a number, a string of
    at most `max_chars` characters, a boolean or null."""
    labels = label if isinstance(label, list) else [label]
    if len(labels) != rows:
        raise Refused(400, "BAD_REQUEST", f"{len(labels)} label(s) for a request of {rows} row(s): send one label "
                                          "per row, in the request's order")
    for value in labels:
        if isinstance(value, str) and len(value) > max_chars:
            raise Refused(400, "BAD_REQUEST", f"a label of {len(value)} characters; at most "
                                              f"serve.feedback.max_label_chars={max_chars}")
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise Refused(400, "BAD_REQUEST", f"a label of type {type(value).__name__}; labels are numbers, strings, "
                                              "booleans or null")
    return labels
