"""Profile one server under load with py-spy: a flame graph and a summary of where CPU goes.

`python -m bench --profile NAME` starts NAME, drives `/predict` with 64 connections and samples
its whole process tree (workers included) twice: once for the flame graph, once as collapsed
stacks that are summed here by layer (HTTP server, framework, validation, model, metrics...).
"""

import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench import load, servers
from bench.servers import Server

SECONDS = 10
RATE = 200  # samples per second; py-spy samples without pausing the target (--nonblocking)

# Layer of a frame, by the first matching fragment of its file path.
LAYERS = (
    ("model (scikit-learn, numpy, scipy)", ("sklearn/", "numpy/", "scipy/", "threadpoolctl")),
    ("validation and models (pydantic)", ("pydantic",)),
    ("JSON", ("json/", "orjson")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("tracing (opentelemetry)", ("opentelemetry",)),
    ("logging", ("logging/",)),
    ("BentoML", ("_bentoml_impl", "_bentoml_sdk", "bentoml/")),
    ("framework (starlette, fastapi, flask)", ("starlette/", "fastapi/", "flask/", "werkzeug/")),
    ("HTTP server (uvicorn, gunicorn, mlserver)", ("uvicorn/", "gunicorn/", "mlserver/")),
    ("event loop and threads", ("asyncio/", "anyio/", "threading.py", "concurrent/")),
)


def _samples(collapsed: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in collapsed.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames:
            stacks.append((frames.split(";"), int(count)))
    return stacks


def summary(collapsed: Path, title: str) -> str:
    """Share of samples whose stack passes through each layer, and the hottest functions."""
    stacks = _samples(collapsed)
    total = sum(count for _, count in stacks) or 1
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        leaves[frames[-1]] += count
        for layer, fragments in LAYERS:
            if any(f in frame for frame in frames for f in fragments):
                layers[layer] += count
    lines = [
        f"# Profile: {title}",
        "",
        f"py-spy, {RATE} Hz, {SECONDS} s of `/predict` at 64 connections, whole process tree; "
        f"{total} samples of running threads.",
        "",
        "| layer (inclusive: samples whose stack passes through it) | share |",
        "|---|---|",
        *(f"| {layer} | {n / total:.0%} |" for layer, n in layers.most_common()),
        "",
        "| hottest functions (self time) | share |",
        "|---|---|",
        *(f"| `{leaf}` | {n / total:.1%} |" for leaf, n in leaves.most_common(15)),
    ]
    return "\n".join(lines) + "\n"


def run(server: Server, bodies: dict[str, dict[str, Path]], results: Path) -> None:
    """Profile `server` and write flame-NAME.svg and profile-NAME.md to `results`."""
    body = bodies["v2" if server.protocol == "v2" else "contract"]["predict"]
    running = servers.start(server, results / "raw" / "logs" / f"profile-{server.name}.log")
    py_spy = str(Path(sys.executable).parent / "py-spy")
    collapsed = results / "raw" / f"profile-{server.name}.txt"
    try:
        servers.wait_healthy(running, timeout=300)
        url = running.url(server.paths["predict"])
        load.wrk(url, body, 64, 2)
        for fmt, out in (("flamegraph", results / f"flame-{server.name}.svg"), ("raw", collapsed)):
            record = subprocess.Popen(
                [
                    *(py_spy, "record", "--pid", str(running.process.pid), "--subprocesses"),
                    *("--nonblocking", "--rate", str(RATE), "--duration", str(SECONDS)),
                    *("--format", fmt, "--output", str(out)),
                ],
                stdout=subprocess.DEVNULL,
            )
            load.wrk(url, body, 64, SECONDS + 2)
            record.wait(timeout=60)
    finally:
        servers.stop(running)
    text = summary(collapsed, server.label)
    (results / f"profile-{server.name}.md").write_text(text)
    print(text)
