"""`make rollout` and `make crash-drill`: the drills of docs/deployment.md, with their report.

    python -m rollout rollout [--rollback] [--runs N] [--runtime auto|container|process] ...
    python -m rollout crash [--runs N] ...

Trains the model versions into a model store of its own (v1, and v2 for a rollout), builds an
image of each (a Bento when the instances are processes), runs the drill `--runs` times under
steady load and prints, for each run, what the load generator saw; the whole report goes to
`--report` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout import drill, haproxy, versions
from rollout.instances import Container, Instance, Process, containers_available


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rollout", description=__doc__)
    parser.add_argument("drill", choices=("rollout", "crash"))
    parser.add_argument("--rollback", action="store_true", help="then roll back from v2 to v1")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--runtime",
        choices=("auto", "container", "process"),
        default="auto",
        help="auto: containers where podman is set up (the container tier), else processes",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(1, 2),
        default=2,
        help="deploy/haproxy/haproxy.cfg has three slots: the replicas and the surge",
    )
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--steady-s", type=float, default=20, help="load before each drill")
    parser.add_argument("--down-s", type=float, default=5, help="crash: killed this long")
    parser.add_argument(
        "--train-args", default="--seed 7", help="train.py's arguments for v2 (a new version)"
    )
    parser.add_argument("--image-prefix", default="iris_classifier:rollout")
    parser.add_argument(
        "--store", type=Path, help="model and Bento store to train into (default: a fresh one)"
    )
    parser.add_argument(
        "--images",
        nargs="+",
        help="images (Bento tags for processes, in --store) of v1 and v2 from an earlier run: "
        "nothing is trained or built",
    )
    parser.add_argument("--report", type=Path, help="write the whole report here (JSON)")
    return parser.parse_args(argv)


def runtime_of(kind: str, work_dir: Path) -> tuple[str, drill.Runtime]:
    """The instances' kind ("container" or "process") and how to make one."""
    if kind == "container" or (kind == "auto" and containers_available()):

        def container(image: str, port: int, key: str, name: str) -> Instance:
            return Container(image, port, key, name)

        return "container", container

    def process(image: str, port: int, key: str, name: str) -> Instance:
        return Process(image, port, key, work_dir)

    return "process", process


def summary(run: int, report: dict[str, Any]) -> str:
    """What the closing note of the drills gives: for each run, each drill's duration, and for
    each phase the requests sent, failed, connection errors and p99."""
    drills = ", ".join(f"{d['duration_s']:.1f} s" for d in report["drills"])
    phases = "\n".join(
        f"  {p['phase']:<15} sent {p['sent']:>6}  failed {p['failed']}  connection errors "
        f"{p['connection_errors']}  p50 {p['p50_ms']} ms  p99 {p['p99_ms']} ms"
        for p in report["phases"]
    )
    return f"run {run}: {report['drill']} drill {drills}; HAProxy {report['haproxy']}\n{phases}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    haproxy.ensure_installed()
    work_dir = Path(tempfile.mkdtemp(prefix="iris-rollout-"))
    os.environ["BENTOML_HOME"] = str(args.store or work_dir / "bentoml")
    kind, runtime = runtime_of(args.runtime, work_dir)
    versions_needed = 2 if args.drill == "rollout" else 1

    def new_version(train_args: list[str], tag: str) -> tuple[str, str]:
        """A model version trained, and its image (or Bento)."""
        model = versions.train(train_args)
        return model, versions.build_image(tag) if kind == "container" else versions.build_bento()

    started = time.monotonic()
    if args.images:
        models, images = [], args.images[:versions_needed]
    else:
        wanted = [([], "v1"), (shlex.split(args.train_args), "v2")][:versions_needed]
        built = [new_version(train_args, f"{args.image_prefix}-{v}") for train_args, v in wanted]
        models, images = [m for m, _ in built], [i for _, i in built]
    print(f"{kind} instances of {images} (models {models}) in {time.monotonic() - started:.0f} s")
    reports = []
    for run in range(1, args.runs + 1):
        prefix = f"iris-{args.drill}-{os.getpid()}-{run}"
        common = {"replicas": args.replicas, "rate": args.rate, "steady_s": args.steady_s}
        if args.drill == "rollout":
            report = drill.rollout_drill(
                runtime, (images[0], images[1]), work_dir, rollback=args.rollback,
                prefix=prefix, **common,
            )  # fmt: skip
        else:
            report = drill.crash_drill(
                runtime, images[0], work_dir, down_s=args.down_s, prefix=prefix, **common
            )
        reports.append(report)
        print(summary(run, report), flush=True)
    if args.report:
        whole = {"runtime": kind, "images": images, "models": models, "args": vars(args)}
        args.report.write_text(json.dumps({**whole, "runs": reports}, indent=2, default=str))
    lost = sum(p["failed"] + p["connection_errors"] for r in reports for p in r["phases"])
    if lost:
        # HAProxy's log (each check and each request) and the processes' logs, to find out why.
        print(f"{lost} requests failed; the logs are kept in {work_dir}")
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
