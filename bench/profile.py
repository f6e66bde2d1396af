"""Profile one server under load with py-spy: a flame graph and a summary of where CPU goes.

`python -m bench --profile NAME` starts NAME, drives it at each of POINTS and samples
its whole process tree (workers included) twice: once for the flame graph, once as collapsed
stacks that are summed here by layer (HTTP server, framework, validation, model, metrics...).
"""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench import load, payloads, servers
from bench.servers import Server

SECONDS = 10
# (body kind, connections): the load under which each profile is taken.
POINTS = (("predict", 64), ("batch", 4))
RATE = 200  # samples per second; --nonblocking: the target is never paused
# Leaf frames of threads that wait (py-spy samples them as running here): left out of the shares.
WAITING = (
    "Condition.wait (",
    "Event.wait (",
    "Connection._recv (",
    "_worker (",
    "select (",
    "Thread.join (",
)

# Layers by top-level package (site-packages) or standard-library module of a frame's file.
LAYERS = {
    "model (scikit-learn, numpy, scipy)": {"sklearn", "numpy", "scipy", "threadpoolctl", "joblib"},
    "validation (pydantic)": {"pydantic", "pydantic_core"},
    "JSON": {"json", "orjson"},
    "metrics (prometheus_client)": {"prometheus_client"},
    "tracing (opentelemetry)": {"opentelemetry"},
    "logging": {"logging", "pythonjsonlogger"},
    "BentoML": {"bentoml", "_bentoml_impl", "_bentoml_sdk"},
    "framework (starlette, fastapi, flask)": {"starlette", "fastapi", "flask", "werkzeug"},
    "HTTP server (uvicorn, gunicorn, mlserver)": {"uvicorn", "h11", "gunicorn", "mlserver"},
    "event loop": {"asyncio", "uvloop", "anyio", "selectors"},
    "thread pool": {"concurrent", "threading.py", "queue.py"},
}
# Layers whose inclusive share means something: leaf work, not middleware that wraps the app
# (tracing, the project's middleware, the loop and the HTTP server hold nearly every stack).
INCLUSIVE = (
    "model (scikit-learn, numpy, scipy)",
    "validation (pydantic)",
    "JSON",
    "metrics (prometheus_client)",
    "logging",
)
FILE = re.compile(r"\((.*):\d+\)$")


def _where(frame: str) -> str:
    """A frame's file, from site-packages, the standard library or this repository."""
    found = FILE.search(frame)
    path = found.group(1) if found else frame
    for marker in ("site-packages/", f"{servers.REPO}/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def layer(frame: str) -> str:
    """The layer a frame belongs to; the project's own modules are "project code"."""
    path = _where(frame)
    if path.startswith(("iris_bento/", "service.py")):
        return "project code"
    top = path.split("/", 1)[0]
    return next((name for name, tops in LAYERS.items() if top in tops), "other")


def _samples(collapsed: Path) -> list[tuple[list[str], int]]:
    """Stacks and their counts, without py-spy's leading process frame nor waiting threads."""
    stacks = []
    for line in collapsed.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        kept = [f for f in frames.split(";") if not f.startswith("process ")]
        if kept and not kept[-1].startswith(WAITING):
            stacks.append((kept, int(count)))
    return stacks


def summary(collapsed: Path, title: str) -> str:
    """CPU samples by layer (self and inclusive) and the hottest functions."""
    stacks = _samples(collapsed)
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        # Generic standard-library code (inspect, functools, uuid...) counts for its caller.
        named = [layer(f) for f in frames]
        own[next((n for n in reversed(named) if n != "other"), "other")] += count
        leaf_name = frames[-1].split(" (", 1)[0]
        leaves[f"{leaf_name} ({_where(frames[-1])})"] += count
        for name in set(named):
            through[name] += count
    lines = [
        f"# Profile: {title}",
        "",
        f"py-spy, {RATE} Hz, {SECONDS} s, whole process tree; "
        f"{total} samples of running threads. Self: the innermost Python frame is in the layer "
        "(native code such as a socket write, and generic standard-library code such as "
        "`inspect`, count for their caller); inclusive: any frame is. Threads waiting on a lock, "
        "queue, pipe or selector are left out. Shares of async code are approximate (a "
        "coroutine awaiting the next middleware can hold its callee's samples): confirm a "
        "suspect with an A/B run before optimising it.",
        "",
        "| layer | self | inclusive |",
        "|---|---|---|",
        *(
            f"| {name} | {own[name] / total:.0%} | "
            f"{f'{through[name] / total:.0%}' if name in INCLUSIVE else ''} |"
            for name in sorted(
                own.keys() | (through.keys() & set(INCLUSIVE)), key=lambda k: -own[k]
            )
        ),
        "",
        "| hottest functions (self) | share |",
        "|---|---|",
        *(f"| `{leaf}` | {n / total:.1%} |" for leaf, n in leaves.most_common(20)),
    ]
    return "\n".join(lines) + "\n"


def _record(pid: int, fmt: str, out: Path, url: str, body: Path, connections: int) -> None:
    """Sample the tree under `pid` for SECONDS while wrk drives `url`."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    record = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"),
            *("--rate", str(RATE), "--duration", str(SECONDS), "--full-filenames"),
            *("--format", fmt, "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
    )
    load.wrk(url, body, connections, SECONDS + 2)
    record.wait(timeout=60)


def run(server: Server, bodies: dict[str, dict[str, Path]], results: Path) -> None:
    """Profile `server` on each point of POINTS: flame-NAME-KIND.svg, profile-NAME.md."""
    paths = bodies[payloads.body_set(server.protocol)]
    running = servers.start(server, results / "raw" / "logs" / f"profile-{server.name}.log")
    sections = []
    try:
        servers.wait_healthy(running, timeout=300)
        pid = running.process.pid
        for kind, connections in POINTS:
            url = running.url(server.paths[kind])
            load.wrk(url, paths[kind], connections, 2)
            flame = results / f"flame-{server.name}-{kind}.svg"
            collapsed = results / "raw" / f"profile-{server.name}-{kind}.txt"
            _record(pid, "flamegraph", flame, url, paths[kind], connections)
            _record(pid, "raw", collapsed, url, paths[kind], connections)
            title = f"{server.label}, `{server.paths[kind]}` at {connections} connections"
            sections.append(summary(collapsed, title))
    finally:
        servers.stop(running)
    text = "\n".join(sections)
    (results / f"profile-{server.name}.md").write_text(text)
    print(text)
