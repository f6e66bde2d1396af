"""The OpenAPI document against the real server: schemathesis generates requests from
`/docs.json`, valid and invalid, for the native and the V2 routes, and checks every answer
against the document. Any mismatch between what the document says and what the server does
fails the test, with schemathesis's report in the output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests
from helpers import API_KEYS, BIN, RunningServer

FUZZING = Path(__file__).parent / "fuzzing"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "ignored_auth",
)
# Seconds of generated requests; every operation is reached well within it.
MAX_TIME_S = 60


@pytest.mark.timeout(300)
def test_the_server_does_what_its_openapi_document_says(
    server: RunningServer, tmp_path: Path
) -> None:
    document = tmp_path / "docs.json"
    answer = requests.get(f"{server.url}/docs.json", headers={"x-api-key": API_KEYS[0]}, timeout=10)
    assert answer.status_code == 200
    document.write_bytes(answer.content)
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(FUZZING / "schemathesis.toml"),
            "run",
            str(document),
            "--url",
            server.url,
            "--checks",
            ",".join(CHECKS),
            "--max-time",
            str(MAX_TIME_S),
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "IRIS_FUZZ_KEY": API_KEYS[0],
            "SCHEMATHESIS_HOOKS": "hooks",
            "PYTHONPATH": str(FUZZING),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(result.stdout)  # the run's report, in pytest's captured output
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    operations = sum(len(item) for item in answer.json()["paths"].values())
    assert f"Tested: {operations}" in result.stdout, "every operation was reached"
