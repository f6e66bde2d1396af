"""Smoke checks of the service contract over real HTTP, for a container or a compose stack.

Standard library only, so it runs with any Python 3.11 against any running instance:
    python scripts/smoke_http.py wait URL [--timeout S]
    python scripts/smoke_http.py check URL --key KEY
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from typing import Any

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


class SmokeFailure(AssertionError):
    """A contract check failed; the message says which and what came back."""


def request(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send one request and return (status, body), 4xx/5xx included, without raising."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http(s) only, see main
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def expect(condition: bool, what: str, detail: object = "") -> None:
    """Raise SmokeFailure with a readable message unless the condition holds."""
    if not condition:
        raise SmokeFailure(f"{what}: {detail!r}"[:600])


def wait_ready(base: str, timeout: float) -> float:
    """Poll /readyz (each poll bounded: a booting server can hang) until 200; return seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise SmokeFailure(f"{base}/readyz not ready after {timeout:.0f}s")


def json_body(status: int, raw: bytes, what: str, want: int = 200) -> Any:
    """Check the status and decode the JSON body."""
    expect(status == want, f"{what} status {status}, expected {want}", raw)
    try:
        return json.loads(raw)
    except ValueError:
        raise SmokeFailure(f"{what}: body is not JSON: {raw[:200]!r}") from None


def check_prediction(pred: dict[str, Any], rid: str, classes: list[str], what: str) -> None:
    """One prediction record: id echoed, a known label, probabilities that add up."""
    expect(pred.get("id") == rid, f"{what} id", pred)
    expect(pred.get("label") in classes, f"{what} label", pred)
    probs = pred.get("probabilities")
    expect(isinstance(probs, dict) and set(probs) == set(classes), f"{what} probabilities", pred)
    expect(math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6), f"{what} sum", probs)
    expect(math.isclose(pred.get("probability", -1), max(probs.values())), f"{what} max", pred)
    expect(pred.get("label") == max(probs, key=probs.__getitem__), f"{what} argmax", pred)
    expect(bool(pred.get("model_version")), f"{what} model_version", pred)


def check(base: str, key: str) -> list[str]:
    """Run every contract check; return one line per passed check."""
    done: list[str] = []
    health = json_body(*request(f"{base}/health"), "GET /health")
    expect(health.get("status") == "ok" and health.get("model") == "iris_clf", "health", health)
    classes = health.get("classes")
    expect(isinstance(classes, list) and len(classes) == 3, "health classes", health)
    expect(len(health.get("features", [])) == 4, "health features", health)
    version = health.get("model_version")
    expect(bool(version), "health model_version", health)
    done.append(f"GET /health 200, model iris_clf:{version}")

    for path in ("/livez", "/readyz"):
        status, raw = request(f"{base}{path}")
        expect(status == 200, f"GET {path}", (status, raw))
        done.append(f"GET {path} 200")

    one = {"id": "r1", "features": SETOSA}
    pred = json_body(*request(f"{base}/predict", "POST", one, {"x-api-key": key}), "predict")
    check_prediction(pred, "r1", classes, "predict")
    expect(pred["label"] == "setosa", "predict setosa", pred)
    expect(pred["model_version"] == version, "predict model_version matches /health", pred)
    done.append(f"POST /predict with x-api-key 200, label {pred['label']}")

    bearer = {"Authorization": f"Bearer {key}"}
    pred = json_body(*request(f"{base}/predict", "POST", one, bearer), "predict bearer")
    check_prediction(pred, "r1", classes, "predict bearer")
    done.append("POST /predict with Authorization: Bearer 200")

    for name, headers in (("no key", {}), ("a wrong key", {"x-api-key": key + "x"})):
        status, raw = request(f"{base}/predict", "POST", one, headers)
        expect(status == 401, f"predict with {name} status", (status, raw))
        done.append(f"POST /predict with {name} 401")

    items = [{"id": "a", "features": SETOSA}, {"id": "b", "features": VIRGINICA}]
    batch = json_body(
        *request(f"{base}/batch_predict", "POST", {"items": items}, {"x-api-key": key}),
        "batch_predict",
    )
    results = batch.get("results")
    expect(isinstance(results, list) and len(results) == 2, "batch results", batch)
    for item, result in zip(items, results, strict=True):
        check_prediction(result, item["id"], classes, "batch item")
    expect(results[1]["label"] == "virginica", "batch virginica", results[1])
    done.append("POST /batch_predict 200, 2 results in order")

    status, raw = request(f"{base}/batch_predict", "POST", {"items": items})
    expect(status == 401, "batch_predict without key", (status, raw))
    done.append("POST /batch_predict without key 401")

    status, raw = request(f"{base}/metrics")
    text = raw.decode(errors="replace")
    expect(status == 200 and "# TYPE" in text, "GET /metrics", (status, text[:200]))
    expect("bentoml_service_request" in text, "metrics count requests", text[:400])
    done.append("GET /metrics 200, Prometheus text with request metrics")
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: `wait` for readiness, or `check` the contract."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["wait", "check"])
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--key", help="an API key the service accepts (check)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (wait)")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        parser.error("the URL must start with http:// or https://")
    try:
        if args.command == "wait":
            print(f"ready after {wait_ready(base, args.timeout):.1f}s")
        else:
            if not args.key:
                parser.error("check needs --key")
            for line in check(base, args.key):
                print(f"ok  {line}")
    except SmokeFailure as err:
        print(f"FAIL {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
