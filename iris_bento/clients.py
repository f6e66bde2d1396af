"""Named clients and their API keys.

Every key belongs to a client with a name, and only the name travels on: in the request's ASGI
scope (`scope["state"]["client"]`, set by `iris_bento.auth.ApiKeyMiddleware`), in the access-log
line, as the label of the per-client metrics and as the key of its quota. Keys come from:

- `IRIS_API_KEYS`, comma-separated: each key is a client of its own, named `key-` and ten hex
  digits of a hash of the key under a project prefix (stable while the key is, and neither the
  key nor the key's SHA-256, so it can be logged);
- `IRIS_API_KEYS_FILE`, a file (a mounted Kubernetes Secret, say) of lines
  `<client> sha256:<hex SHA-256 of the key>`: several lines may name one client, so that a key is
  rotated by adding the new one's line, moving the client to it, and removing the old line.
  `python -m iris_bento.keys new NAME` makes a key and prints its line.

A presented key is hashed once and compared with every configured hash with
`hmac.compare_digest`, without stopping at a match: the time taken does not tell which, or
whether, a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from iris_bento.settings import API_KEYS_ENV, MAX_KEY_BYTES, ApiKeysError

KEYS_FILE_ENV: Final = "IRIS_API_KEYS_FILE"
# Client names: short, lower-case, safe in a log line, a label value and a storage key.
CLIENT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HASH_LINE: Final = re.compile(r"sha256:([0-9a-f]{64})")
# Names of IRIS_API_KEYS clients: not the SHA-256 of the key (what a keys file holds).
_NAME_PREFIX: Final = b"iris-bento client name\x00"
STATE_KEY: Final = "client"


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent a request: its name only."""

    name: str


def key_digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def env_client_name(key: str) -> str:
    """The stable name of an `IRIS_API_KEYS` key's client."""
    return "key-" + hashlib.sha256(_NAME_PREFIX + key.encode()).hexdigest()[:10]


def keys_file_line(name: str, key: str) -> str:
    """The keys file's line for `key`."""
    return f"{name} sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def parse_keys_file(text: str, source: str) -> list[tuple[str, bytes]]:
    """(client name, key digest) for every key line; `#` starts a comment. Raises
    `ApiKeysError` naming the file and the line."""
    entries: list[tuple[str, bytes]] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{KEYS_FILE_ENV} {source} line {number}"
        fields = line.split()
        if len(fields) != 2:
            raise ApiKeysError(f'{where}: expected "<client> sha256:<64 hex digits>"')
        name, hashed = fields
        if not CLIENT_NAME.fullmatch(name):
            raise ApiKeysError(
                f"{where}: client name {name[:64]!r} is not 1-63 of a-z 0-9 . _ - "
                "(starting with a letter or digit)"
            )
        match = _HASH_LINE.fullmatch(hashed)
        if match is None:
            raise ApiKeysError(
                f"{where}: expected sha256:<64 lower-case hex digits>, not a key "
                "(python -m iris_bento.keys new NAME prints the line)"
            )
        digest = bytes.fromhex(match.group(1))
        if digest in seen:
            raise ApiKeysError(f"{where}: the same key is already listed for {seen[digest]}")
        seen[digest] = name
        entries.append((name, digest))
    if not entries:
        raise ApiKeysError(f"{KEYS_FILE_ENV} {source} lists no keys")
    return entries


class Clients:
    """The configured clients and the digests of their keys."""

    def __init__(self, entries: Iterable[tuple[str, bytes]]) -> None:
        clients: dict[str, Client] = {}
        self._entries = tuple(
            (digest, clients.setdefault(name, Client(name))) for name, digest in entries
        )
        self.names = frozenset(clients)

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> Clients:
        """Clients of plain keys, each its own client (as `IRIS_API_KEYS` gives them)."""
        return cls((env_client_name(key), key_digest(key.encode())) for key in keys)

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, key: bytes) -> Client | None:
        """The client whose key this is, compared in constant time against every key."""
        if len(key) > MAX_KEY_BYTES:
            return None
        digest = key_digest(key)
        found = None
        for candidate, client in self._entries:
            if hmac.compare_digest(digest, candidate):
                found = client
        return found


def load_clients(environ: Mapping[str, str] | None = None) -> Clients:
    """The clients of `IRIS_API_KEYS` and `IRIS_API_KEYS_FILE` together. Raises
    `ApiKeysError` in one line: no keys at all, a key too long, a file unreadable or
    malformed, or a name given to keys of both sources."""
    environ = os.environ if environ is None else environ
    keys = [key.strip() for key in environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    if any(len(key.encode()) > MAX_KEY_BYTES for key in keys):
        raise ApiKeysError(f"{API_KEYS_ENV} holds a key longer than {MAX_KEY_BYTES} bytes")
    entries = [(env_client_name(key), key_digest(key.encode())) for key in keys]
    if path := environ.get(KEYS_FILE_ENV, "").strip():
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise ApiKeysError(f"{KEYS_FILE_ENV} {path}: {reason}") from None
        from_file = parse_keys_file(text, path)
        digests = {digest for _, digest in entries}
        if any(digest in digests for _, digest in from_file):
            raise ApiKeysError(f"{KEYS_FILE_ENV} {path} lists a key that {API_KEYS_ENV} holds")
        entries += from_file
    if not entries:
        raise ApiKeysError(
            f"{API_KEYS_ENV} is not set: set it to one or more comma-separated API keys, "
            f"or {KEYS_FILE_ENV} to a keys file"
        )
    return Clients(entries)


def client_of(scope: Mapping[str, object]) -> Client | None:
    """The authenticated client of a request, from its ASGI scope."""
    state = scope.get("state")
    return state.get(STATE_KEY) if isinstance(state, dict) else None
