"""One load point: wrk against a running server, with the server's CPU and memory from /proc.

CPU is summed over the server's whole process tree (supervisors, workers) before and after
the wrk run; the CPU of everything else on the box is recorded too, to judge the figure.
"""

import json
import os
import resource
import subprocess
from pathlib import Path

import psutil

from bench import payloads

LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
MIB = 1024 * 1024


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live process in the tree, by pid."""
    cpu = {}
    for process in _tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        cpu[process.pid] = times.user + times.system
    return cpu


def tree_rss_mib(pid: int) -> float:
    """Resident memory of the whole tree (MiB), shared pages counted once per process."""
    total = 0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / MIB


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine, all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(url: str, body: Path, connections: int, seconds: int) -> dict[str, float]:
    """Run wrk (one thread) and return the figures its Lua `done()` prints."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    argv += ["-s", str(LUA), url]
    env = dict(os.environ, BENCH_BODY_FILE=str(body), BENCH_API_KEY=payloads.API_KEY)
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def measure(pid: int, url: str, body: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run with the server tree's CPU per request, its RSS and the others' CPU."""
    cpu_before, busy_before = tree_cpu(pid), busy_cpu_seconds()
    self_before, wrk_before = _self_cpu(), _children_cpu()
    figures = wrk(url, body, connections, seconds)
    cpu_after, busy_after = tree_cpu(pid), busy_cpu_seconds()
    per_process = [v - cpu_before.get(p, 0.0) for p, v in cpu_after.items()]
    server_cpu = sum(per_process)
    wrk_cpu = _children_cpu() - wrk_before
    others = busy_after - busy_before - server_cpu - wrk_cpu - (_self_cpu() - self_before)
    elapsed = figures["duration_us"] / 1e6
    requests = max(figures["requests"], 1)
    return {
        "requests_per_s": figures["requests"] / elapsed,
        "p50_ms": figures["p50_us"] / 1e3,
        "p90_ms": figures["p90_us"] / 1e3,
        "p99_ms": figures["p99_us"] / 1e3,
        "max_ms": figures["max_us"] / 1e3,
        "requests": figures["requests"],
        "http_4xx_5xx": figures["status"],
        "socket_errors": figures["connect"] + figures["read"] + figures["write"],
        "timeouts": figures["timeout"],
        "server_cpu_us_per_request": server_cpu / requests * 1e6,
        "server_cpu_pct": server_cpu / elapsed * 100,
        # How evenly the workers shared the load: 0.5 is an even split between two workers.
        "busiest_process_cpu_share": max(per_process, default=0.0) / (server_cpu or 1.0),
        "wrk_cpu_pct": wrk_cpu / elapsed * 100,
        "others_cpu_pct": max(others, 0.0) / elapsed * 100,
        "rss_mib": tree_rss_mib(pid),
    }
