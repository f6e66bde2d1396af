"""Named clients: the keys file (hashes, several keys per client, rotation, malformed files), the
names of IRIS_API_KEYS clients, the key command, and the client in the scope and the log."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, asgi_request, refused_start
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iris_bento.auth import ApiKeyMiddleware
from iris_bento.clients import (
    Clients,
    env_client_name,
    keys_file_line,
    load_clients,
    parse_keys_file,
)
from iris_bento.settings import ApiKeysError


async def who(request: Request) -> Response:
    client = request.state.client
    return JSONResponse({"client": client.name})


def app_with(clients: Clients) -> Any:
    return ApiKeyMiddleware(Starlette(routes=[Route("/who", who)]), clients=clients)


def ask(app: Any, key: str) -> tuple[int, bytes]:
    status, _, body = asyncio.run(asgi_request(app, "GET", "/who", headers={"x-api-key": key}))
    return status, body


def keys_file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "keys"
    path.write_text(text)
    return {"IRIS_API_KEYS_FILE": str(path)}


def test_a_keys_file_names_clients_by_the_hash_of_their_keys(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "# clients and their keys",
            keys_file_line("batch-jobs", "old-key"),
            keys_file_line("batch-jobs", "new-key") + "   # rotation: both for now",
            "",
            keys_file_line("web", "web-key"),
        ]
    )
    assert "old-key" not in text and hashlib.sha256(b"old-key").hexdigest() in text
    app = app_with(load_clients(keys_file(tmp_path, text)))
    assert ask(app, "old-key") == (200, b'{"client":"batch-jobs"}')
    assert ask(app, "new-key") == (200, b'{"client":"batch-jobs"}')
    assert ask(app, "web-key") == (200, b'{"client":"web"}')
    # A hash is not a key.
    assert ask(app, hashlib.sha256(b"web-key").hexdigest())[0] == 401
    assert ask(app, "other")[0] == 401


def test_rotation_the_old_key_stops_once_its_line_is_gone(tmp_path: Path) -> None:
    before = load_clients(keys_file(tmp_path, keys_file_line("web", "old") + "\n"))
    during = load_clients(
        keys_file(tmp_path, keys_file_line("web", "old") + "\n" + keys_file_line("web", "new"))
    )
    after = load_clients(keys_file(tmp_path, keys_file_line("web", "new") + "\n"))
    assert [ask(app_with(c), "old")[0] for c in (before, during, after)] == [200, 200, 401]
    assert [ask(app_with(c), "new")[0] for c in (before, during, after)] == [401, 200, 200]


def test_plain_keys_are_clients_with_stable_names_that_reveal_nothing() -> None:
    clients = Clients.from_keys(["first-key", "second-key"])
    assert ask(app_with(clients), "first-key") == (
        200,
        b'{"client":"%s"}' % env_client_name("first-key").encode(),
    )
    name = env_client_name("first-key")
    assert name == env_client_name("first-key") != env_client_name("second-key")
    assert name.startswith("key-") and len(name) == 14
    assert name[4:] not in hashlib.sha256(b"first-key").hexdigest()
    assert "first" not in name


def test_both_sources_together(tmp_path: Path) -> None:
    env = keys_file(tmp_path, keys_file_line("web", "web-key")) | {"IRIS_API_KEYS": "plain"}
    clients = load_clients(env)
    assert clients.names == {"web", env_client_name("plain")}
    env["IRIS_API_KEYS"] = "web-key"
    with pytest.raises(ApiKeysError, match="lists a key that IRIS_API_KEYS holds"):
        load_clients(env)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("web\n", "line 1: expected"),
        ("web sha256:abc\n", "line 1: expected sha256:<64"),
        ("# only a comment\nweb a-plain-key\n", "line 2: expected sha256:<64"),
        ("Web sha256:" + "0" * 64, "client name 'Web'"),
        ("web sha256:" + "0" * 64 + " extra", "line 1: expected"),
        ("a sha256:" + "0" * 64 + "\nb sha256:" + "0" * 64, "line 2: the same key"),
        ("# nothing\n\n", "lists no keys"),
        ("web SHA256:" + "A" * 64, "line 1: expected sha256"),
    ],
)
def test_a_malformed_keys_file_is_refused_in_one_line(text: str, problem: str) -> None:
    with pytest.raises(ApiKeysError, match=problem) as refused:
        parse_keys_file(text, "/run/keys")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("IRIS_API_KEYS_FILE /run/keys")


def test_an_unreadable_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApiKeysError, match="No such file"):
        load_clients({"IRIS_API_KEYS_FILE": str(tmp_path / "missing")})
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ApiKeysError, match="not UTF-8"):
        load_clients({"IRIS_API_KEYS_FILE": str(tmp_path / "binary")})


def test_the_server_refuses_to_start_with_a_malformed_keys_file(
    model_tag: str, tmp_path: Path
) -> None:
    path = tmp_path / "keys"
    path.write_text("web not-a-hash\n")
    env = {k: v for k, v in os.environ.items() if k != "IRIS_API_KEYS"}
    env["IRIS_API_KEYS_FILE"] = str(path)
    line = refused_start(env)
    assert line.endswith(
        f" IRIS_API_KEYS_FILE {path} line 1: expected sha256:<64 lower-case hex digits>, "
        "not a key (python -m iris_bento.keys new NAME prints the line)"
    )


def new_key(name: str) -> subprocess.CompletedProcess[str]:
    """`python -m iris_bento.keys new NAME`, as the README runs it (through `make key`)."""
    command = [sys.executable, "-m", "iris_bento.keys", "new", name]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_the_key_command_prints_a_key_once_and_its_line(tmp_path: Path) -> None:
    done = new_key("batch-jobs")
    assert done.returncode == 0, done.stderr
    key, line = done.stdout.splitlines()
    assert len(key) >= 40 and "IRIS_API_KEYS_FILE" in done.stderr
    assert line == keys_file_line("batch-jobs", key)
    assert ask(app_with(load_clients(keys_file(tmp_path, line))), key) == (
        200,
        b'{"client":"batch-jobs"}',
    )
    again = new_key("batch-jobs")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] != key
    bad = new_key("Bad Name")
    assert bad.returncode == 1 and bad.stdout == ""
