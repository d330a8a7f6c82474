"""The gate's keys from the command line (docs/quality.md#keys-rotation-and-revocation).

    python -m mlpipe.registry.keys show [KEY_FILE]   the public key and id of a private key (or .pub) file
    python -m mlpipe.registry.keys new KEY_FILE      a new private key (mode 0600) and its .pub; an
                                                     existing file is never overwritten

KEY_FILE defaults to trust.signing_key's default: $MLPIPE_GATE_KEY, else ~/.mlpipe/gate.key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlpipe.errors import ConfigError
from mlpipe import signing


def default_path() -> Path:
    return Path(os.environ.get("MLPIPE_GATE_KEY") or "~/.mlpipe/gate.key").expanduser()


def show(path: Path) -> str:
    path = Path(path).expanduser()
    if path.suffix == ".pub":
        public = signing.parse_public(path.read_text(), str(path))
    elif path.is_file():
        public = signing.load_private(path).public_key()
    else:
        raise ConfigError(f"{path}: no such key file (qa creates trust.signing_key on first use; "
                          "`python -m mlpipe.registry.keys new <file>` makes one)")
    return f"{signing.public_text(public)}  id {signing.key_id(public)}  ({path})"


def new(path: Path) -> str:
    path = Path(path).expanduser()
    if path.exists():
        raise ConfigError(f"{path} exists: a key is never overwritten; choose another file")
    key, _ = signing.load_or_create(path)
    return (f"created {path} (mode 0600) and {path.name}.pub: {signing.public_text(key.public_key())}  id "
            f"{signing.key_id(key.public_key())}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("show", "new") or len(argv) > 2 or (argv[0] == "new" and len(argv) != 2):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        path = Path(argv[1]) if len(argv) == 2 else default_path()
        print(show(path) if argv[0] == "show" else new(path))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
