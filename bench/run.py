"""The benchmark: peers and project in alternating rounds, then the report.

`python -m bench` (what `make bench` runs) does a full run; `--quick` one short round for
development. Every server is started, timed to its first healthy answer, checked against the
contract, warmed up, driven by wrk at each load point, and stopped.
"""

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from bench import checks, load, payloads, profile, report, servers
from bench.servers import REPO, Server

RESULTS = servers.BENCH / "results"
RAW = RESULTS / "raw"

# (point name, body kind, connections): the load points of issue 4.
POINTS = (
    ("predict c=1", "predict", 1),
    ("predict c=16", "predict", 16),
    ("predict c=64", "predict", 64),
    ("batch c=4", "batch", 4),
)
# The project's variants measure what they are compared on: c=64, and for the V2 route the
# 1000-row body too.
VARIANT_POINTS = POINTS[2:3]
V2_POINTS = POINTS[2:4]
# What `train.py` trains by default, and so what the project serves.
DEFAULT_ESTIMATOR = "logistic_regression"

# The environment that switches the project's adaptive batching off, for the on/off comparison
# ("project-nobatch"): the service reads `services.IrisClassifier.iris.batching.enabled` from
# BentoML's configuration, which BENTOML_CONFIG_OVERRIDES (JSON, deep-merged) overrides.
# `--batching-off NAME=VALUE` replaces it, should the switch move.
PROJECT_BATCHING_OFF = {
    "BENTOML_CONFIG_OVERRIDES": json.dumps(
        {"services": {"IrisClassifier": {"iris": {"batching": {"enabled": False}}}}}
    )
}

# Quotas on, with limits so high that the benchmark never hits one: what checking a quota costs
# on every request, in process (memory://) and in a Redis of its own that the harness starts
# beside the project ({redis_port}, see servers.start).
_NEVER_HIT = {"requests_per_second": 1_000_000, "burst": 1_000_000, "rows_per_second": 1_000_000}


def quotas_on(storage_url: str) -> dict[str, str]:
    quotas = {"enabled": True, "storage_url": storage_url, "default": _NEVER_HIT}
    return {
        "BENTOML_CONFIG_OVERRIDES": json.dumps(
            {"services": {"IrisClassifier": {"iris": {"quotas": quotas}}}}
        )
    }


@dataclass(frozen=True)
class Settings:
    """How long and how often: the full run stays well under 30 minutes."""

    rounds: int = 5
    seconds: int = 5
    warmup: int = 2


QUICK = Settings(rounds=1, seconds=2, warmup=1)


def ensure_wrk() -> None:
    """Install Debian's wrk when it is missing (the harness runs as root on Debian)."""
    if shutil.which("wrk"):
        return
    print("[bench] installing wrk with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    wrk_version = subprocess.run(
        ["wrk", "-v"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split(" [")[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def top() -> list[str]:
    """The busiest processes on the box at the start of a round, to name what disturbed it."""
    argv = ["top", "-b", "-n2", "-d0.5", "-w", "200"]  # the second frame has CPU figures
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return ("top -" + done.stdout.split("top -")[-1]).splitlines()[:20]


def lineup(
    only: set[str] | None, batching_off: dict[str, str], estimator: str | None
) -> list[Server]:
    """Peers, then the project and its variants when this checkout has it."""
    chosen = list(servers.PEERS)
    if servers.project_ready():
        home = model_home(DEFAULT_ESTIMATOR)
        off = home | batching_off
        chosen.append(servers.project("project", "project (iris-bento)", home))
        chosen.append(servers.project_v2(home))
        chosen.append(servers.project("project-nobatch", "project, batching off", off))
        chosen.append(
            servers.project(
                "project-quota-memory",
                "project, quotas in memory",
                home | quotas_on("memory://"),
                note="quotas on, never hit; each worker counts on its own",
            )
        )
        chosen.append(
            servers.project(
                "project-quota-redis",
                "project, quotas in Redis",
                home | quotas_on("redis://127.0.0.1:{redis_port}/0"),
                note="quotas on, never hit; a local redis-server",
                redis=True,
            )
        )
        chosen.append(servers.bentoml_ceiling())
        if estimator:
            home = model_home(estimator)
            off = home | batching_off
            chosen += [
                servers.project(f"project-{estimator}", f"project, {estimator}", home),
                servers.project(
                    f"project-{estimator}-nobatch", f"project, {estimator}, batching off", off
                ),
            ]
    else:
        print("[bench] no service.py on this branch yet: peers only", flush=True)
    return [s for s in chosen if only is None or s.name in only]


def model_home(estimator: str) -> dict[str, str]:
    """The benchmark's own model store for an estimator: results never depend on what the
    user's store holds, and every run serves a model that this checkout's train.py made."""
    return {"BENTOML_HOME": str(servers.VENVS / "run" / f"project-{estimator}")}


def prepare_project(server: Server, untrained: dict[str, str]) -> None:
    """First start of a project variant outside the measurement: venv, model, caches.

    `untrained` maps the model stores still to fill in this run to their estimator; the first
    variant of each store trains it afresh.
    """
    home = server.env.get("BENTOML_HOME")
    if home in untrained:
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(
            ["make", "--no-print-directory", ".venv/bin/.installed"], cwd=REPO, check=True
        )
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "train.py", "--estimator", untrained[home]],
            cwd=REPO,
            env=servers.environment(server, 0),
            check=True,
        )
        del untrained[home]
    running = servers.start(server, RAW / "logs" / f"{server.name}-prepare.log")
    try:
        servers.wait_healthy(running, timeout=900)
    finally:
        servers.stop(running)


def compute_ceiling(lineup_: list[Server]) -> dict[str, float] | None:
    """predict_proba timed in-process on the first contract peer's model, in the project's venv
    (the same numpy and scikit-learn pins as the peers', and the project's numpy form)."""
    peer = next((s for s in lineup_ if s.venv and s.protocol == "contract"), None)
    if peer is None:
        return None
    python = REPO / ".venv" / "bin" / "python"
    env = servers.environment(peer, 0)
    done = subprocess.run(
        [str(python), "-m", "bench.compute"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def bench_server(
    server: Server, bodies: dict[str, Path], settings: Settings, log: Path
) -> dict[str, object]:
    """Start, time, check, warm up, measure every point, stop."""
    running = servers.start(server, log)
    try:
        cold = servers.wait_healthy(running, timeout=300)
        problems = checks.check(running)
        url = {kind: running.url(path) for kind, path in server.paths.items()}
        pid = running.process.pid
        load.wrk(url["predict"], bodies["predict"], 16, settings.warmup)
        points = POINTS
        if server.protocol == "project-v2":
            points = V2_POINTS
        elif server.name.startswith("project-"):
            points = VARIANT_POINTS
        measured = {}
        for name, kind, connections in points:
            measured[name] = load.measure(
                pid, url[kind], bodies[kind], connections, settings.seconds
            )
            print(f"[bench]   {server.name:24} {name:13} {_brief(measured[name])}", flush=True)
        return {"cold_start_s": cold, "problems": problems, "points": measured}
    except (
        RuntimeError,
        TimeoutError,
        subprocess.SubprocessError,
        OSError,
        psutil.Error,
    ) as failed:
        print(f"[bench]   {server.name}: FAILED {failed}", flush=True)
        return {"failed": str(failed)}
    finally:
        servers.stop(running)


def _brief(point: dict[str, float]) -> str:
    errors = point["http_4xx_5xx"] + point["socket_errors"] + point["timeouts"]
    return (
        f"{point['requests_per_s']:9.0f} req/s  p50 {point['p50_ms']:7.2f} ms  "
        f"p99 {point['p99_ms']:7.2f} ms  cpu {point['server_cpu_us_per_request']:6.0f} us/req  "
        f"errors {errors}  others {point['others_cpu_pct']:3.0f}%"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round, for development")
    parser.add_argument("--only", help="comma-separated server names (default: all)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--seconds", type=int, help="override the seconds per load point")
    parser.add_argument(
        "--batching-off",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment that switches the project's batching off (adds project-nobatch)",
    )
    parser.add_argument(
        "--estimator",
        default="random_forest",
        help="heavier estimator for the batching comparison (`train.py --estimator NAME`); "
        "'none' skips it",
    )
    parser.add_argument("--profile", metavar="NAME", help="profile one server with py-spy instead")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else Settings()
    if args.rounds or args.seconds:
        settings = replace(
            settings,
            rounds=args.rounds or settings.rounds,
            seconds=args.seconds or settings.seconds,
        )
    batching_off = dict(kv.split("=", 1) for kv in args.batching_off) or PROJECT_BATCHING_OFF
    only = set(args.only.split(",")) if args.only else None
    if args.profile:
        only = {args.profile}
    estimator = None if args.estimator == "none" else args.estimator
    chosen = lineup(only, batching_off, estimator)

    ensure_wrk()
    if any(server.redis for server in chosen):
        servers.ensure_redis()
    untrained = {
        model_home(name)["BENTOML_HOME"]: name for name in (DEFAULT_ESTIMATOR, estimator) if name
    }
    for server in chosen:
        print(f"[bench] preparing {server.name}", flush=True)
        if server.venv:
            servers.prepare(server)
        else:
            prepare_project(server, untrained)

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    paths = payloads.write_bodies(RAW / "bodies")
    if args.profile:
        profile.run(chosen[0], paths, RESULTS)
        return

    raw: dict[str, object] = {
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD")
        + ("+dirty" if _git("status", "--porcelain") else ""),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "machine": machine(),
        "settings": settings.__dict__,
        "servers": {
            s.name: {"label": s.label, "note": s.note, "protocol": s.protocol} for s in chosen
        },
        "rounds": [],
    }
    began = time.monotonic()
    for number in range(settings.rounds):
        order = chosen[number % len(chosen) :] + chosen[: number % len(chosen)]
        print(
            f"[bench] round {number + 1}/{settings.rounds}: {', '.join(s.name for s in order)}",
            flush=True,
        )
        measured = {"compute": compute_ceiling(chosen), "top": top(), "servers": {}}
        for server in order:
            bodies = paths[payloads.body_set(server.protocol)]
            log = RAW / "logs" / f"{stamp}-{server.name}.log"
            measured["servers"][server.name] = bench_server(server, bodies, settings, log)
        raw["rounds"].append(measured)
    raw["elapsed_s"] = time.monotonic() - began

    RAW.mkdir(parents=True, exist_ok=True)
    raw_path = RAW / f"{stamp}-{raw['mode']}.json"
    raw_path.write_text(json.dumps(raw, indent=1))
    out = RESULTS if raw["mode"] == "full" else RAW / "quick"
    print(report.write(raw, out))
    print(f"[bench] raw figures: {raw_path.relative_to(REPO)}; report in {out.relative_to(REPO)}/")
