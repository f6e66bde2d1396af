"""API keys for named clients (`make key NAME=...` runs the first form):

    python -m iris_bento.keys new NAME   a new key for client NAME: the key once, on stdout's
                                         first line, and the line for IRIS_API_KEYS_FILE
    python -m iris_bento.keys names      the clients that IRIS_API_KEYS and IRIS_API_KEYS_FILE
                                         configure, by the names logs, metrics and quotas use

The key is shown once and stored nowhere: give it to the client, and put only the line (its
SHA-256) in the keys file. docs/clients.md shows a rotation end to end.
"""

from __future__ import annotations

import secrets
import sys

from iris_bento.clients import CLIENT_NAME, KEYS_FILE_ENV, keys_file_line, load_clients
from iris_bento.settings import ApiKeysError

# 32 random bytes, URL-safe: 43 characters, far below the 256-byte limit.
KEY_BYTES = 32


def new_key(name: str) -> tuple[str, str]:
    """A fresh key for `name` and its line for the keys file."""
    key = secrets.token_urlsafe(KEY_BYTES)
    return key, keys_file_line(name, key)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "new":
        name = argv[1]
        if not CLIENT_NAME.fullmatch(name):
            print(
                f"client name {name[:64]!r}: use 1-63 of a-z 0-9 . _ - "
                "(starting with a letter or digit)",
                file=sys.stderr,
            )
            return 1
        key, line = new_key(name)
        print(key)
        print(
            f"# Give the key above to {name}; it is shown only this once. "
            f"Add this line to the file {KEYS_FILE_ENV} names:",
            file=sys.stderr,
        )
        print(line)
        return 0
    if argv == ["names"]:
        try:
            clients = load_clients()
        except ApiKeysError as error:
            print(error, file=sys.stderr)
            return 1
        print("\n".join(sorted(clients.names)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
