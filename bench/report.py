"""The report of one run: a Markdown table, ratios to the peers, the goals, a PNG chart.

Figures are medians over rounds with their spread (min-max); ratios are taken round by round
between servers measured in the same round, then their median, which cancels most of the
machine's drift between rounds.
"""

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

Run = dict[str, object]
Result = dict[str, object]


def _point(point: str, key: str, scale: float = 1.0) -> Callable[[Result], float | None]:
    def get(result: Result) -> float | None:
        figures = result.get("points", {}).get(point)
        return None if figures is None else figures[key] * scale

    return get


def _rss(result: Result) -> float | None:
    points = result.get("points", {})
    return max((p["rss_mib"] for p in points.values()), default=None)


def _cold(result: Result) -> float | None:
    return result.get("cold_start_s")


# (key, column header, getter, format, higher is better)
METRICS = (
    ("c64_rps", "`/predict` c=64 req/s", _point("predict c=64", "requests_per_s"), "{:,.0f}", True),
    ("c64_p99", "c=64 p99 ms", _point("predict c=64", "p99_ms"), "{:.1f}", False),
    ("c16_rps", "c=16 req/s", _point("predict c=16", "requests_per_s"), "{:,.0f}", True),
    ("c1_p50", "c=1 p50 ms", _point("predict c=1", "p50_ms"), "{:.2f}", False),
    ("c1_p99", "c=1 p99 ms", _point("predict c=1", "p99_ms"), "{:.2f}", False),
    (
        "batch_rows",
        "`/batch_predict` rows/s",
        _point("batch c=4", "requests_per_s", 1000),
        "{:,.0f}",
        True,
    ),
    (
        "cpu_us",
        "CPU µs/request (c=64)",
        _point("predict c=64", "server_cpu_us_per_request"),
        "{:,.0f}",
        False,
    ),
    ("rss", "RSS MiB", _rss, "{:.0f}", False),
    ("cold", "cold start s", _cold, "{:.2f}", False),
)
GETTERS = {key: getter for key, _, getter, _, _ in METRICS}
FORMATS = {key: fmt for key, _, _, fmt, _ in METRICS}


class Goal(NamedTuple):
    """Met when subject/peer >= bound (higher is better) or <= bound (lower is better): on the
    median of the rounds, or in every round when the goal asks for that."""

    text: str
    metric: str
    subject: str
    peer: str
    bound: float
    every_round: bool = False


GOALS = (
    Goal("`/predict` c=64 req/s ≥ 2 × FastAPI (15)", "c64_rps", "project", "fastapi", 2.0),
    Goal("`/predict` c=64 p99 ≤ 0.5 × FastAPI (15)", "c64_p99", "project", "fastapi", 0.5),
    Goal("`/predict` c=1 p50 ≤ 0.6 × FastAPI (15)", "c1_p50", "project", "fastapi", 0.6),
    Goal("`/predict` c=1 p99 ≤ 2 × FastAPI (4)", "c1_p99", "project", "fastapi", 2.0),
    Goal("CPU per `/predict` ≤ 0.5 × FastAPI (15)", "cpu_us", "project", "fastapi", 0.5),
    Goal(
        "`/batch_predict` rows/s ≥ 1.5 × MLServer (15; its body: a flat tensor, no ids)",
        "batch_rows",
        "project",
        "mlserver",
        1.5,
    ),
    Goal(
        "V2 `/infer` rows/s ≥ 2 × MLServer's V2 (13; the same flat [1000, 4] body)",
        "batch_rows",
        "project-v2",
        "mlserver",
        2.0,
    ),
    Goal("RSS ≤ textbook BentoML (4)", "rss", "project", "bentoml", 1.0),
    Goal("cold start ≤ 1.5 × FastAPI (4)", "cold", "project", "fastapi", 1.5),
    Goal(
        "batching on/off, c=64, logistic regression ≥ 1, every round (15)",
        "c64_rps",
        "project",
        "project-nobatch",
        1.0,
        every_round=True,
    ),
    Goal(
        "batching on/off, c=64, random forest ≥ 2 (4)",
        "c64_rps",
        "project-random_forest",
        "project-random_forest-nobatch",
        2.0,
    ),
)
# Ratios reported without a goal: (text, metric, subject, peer).
RATIOS = (
    ("`/predict` c=64 req/s, project / FastAPI (moonshot: 3)", "c64_rps", "project", "fastapi"),
    ("`/predict` c=64 req/s, project / bare ASGI ceiling", "c64_rps", "project", "bare-asgi"),
    ("`/predict` c=64 req/s, project / BentoML ceiling", "c64_rps", "project", "bentoml-ceiling"),
    ("CPU per `/predict`, project / BentoML ceiling", "cpu_us", "project", "bentoml-ceiling"),
    ("`/predict` c=64 req/s, BentoML ceiling / FastAPI", "c64_rps", "bentoml-ceiling", "fastapi"),
    ("CPU per `/predict`, BentoML ceiling / FastAPI", "cpu_us", "bentoml-ceiling", "fastapi"),
    ("`/predict` c=1 p50, BentoML ceiling / FastAPI", "c1_p50", "bentoml-ceiling", "fastapi"),
    ("`/predict` c=64 req/s, project / MLServer", "c64_rps", "project", "mlserver"),
    ("V2 one-row `/infer` c=64 req/s, project / MLServer", "c64_rps", "project-v2", "mlserver"),
    ("`/predict` c=64 req/s, FastAPI / textbook BentoML", "c64_rps", "fastapi", "bentoml"),
    ("`/predict` c=64 req/s, quotas in memory / off", "c64_rps", "project-quota-memory", "project"),
    ("CPU per `/predict`, quotas in memory / off", "cpu_us", "project-quota-memory", "project"),
    ("`/predict` c=64 req/s, quotas in Redis / off", "c64_rps", "project-quota-redis", "project"),
    ("CPU per `/predict`, quotas in Redis / off", "cpu_us", "project-quota-redis", "project"),
)
HIGHER_IS_BETTER = {key: higher for key, _, _, _, higher in METRICS}


def values(run: Run, server: str, metric: str) -> list[float]:
    """The metric of `server` in each round where it was measured."""
    found = []
    for measured in run["rounds"]:
        result = measured["servers"].get(server)
        value = None if result is None else GETTERS[metric](result)
        if value is not None:
            found.append(value)
    return found


def ratios(run: Run, metric: str, subject: str, peer: str) -> list[float]:
    """subject/peer in each round that measured both."""
    found = []
    for measured in run["rounds"]:
        a, b = measured["servers"].get(subject), measured["servers"].get(peer)
        if a is None or b is None:
            continue
        x, y = GETTERS[metric](a), GETTERS[metric](b)
        if x is not None and y:
            found.append(x / y)
    return found


def spread(found: list[float], fmt: str) -> str:
    """Median, with min-max when there are several rounds."""
    if not found:
        return "–"
    median = fmt.format(statistics.median(found))
    if len(found) == 1:
        return median
    return f"{median} ({fmt.format(min(found))}–{fmt.format(max(found))})"


def _errors(run: Run, server: str) -> str:
    http = socket = timeouts = 0
    for measured in run["rounds"]:
        for figures in measured["servers"].get(server, {}).get("points", {}).values():
            http += figures["http_4xx_5xx"]
            socket += figures["socket_errors"]
            timeouts += figures["timeouts"]
    parts = [
        f"{n} {kind}"
        for n, kind in ((http, "4xx/5xx"), (socket, "socket"), (timeouts, "timeout"))
        if n
    ]
    return ", ".join(parts) or "0"


def _problems(run: Run, server: str) -> list[str]:
    found: list[str] = []
    for measured in run["rounds"]:
        result = measured["servers"].get(server, {})
        found += result.get("problems", [])
        if "failed" in result:
            found.append(f"failed: {result['failed']}")
    return sorted(set(found))


def _others(run: Run, server: str | None = None) -> list[float]:
    """CPU % of one core taken by other processes during each load point (of `server`)."""
    return [
        figures["others_cpu_pct"]
        for measured in run["rounds"]
        for name, result in measured["servers"].items()
        if server is None or name == server
        for figures in result.get("points", {}).values()
    ]


def _cell(run: Run, server: str, metric: str) -> str:
    """A table cell; the fixed-answer ceiling parses no rows, so its batch figure is req/s."""
    found = values(run, server, metric)
    if metric == "batch_rows" and run["servers"][server]["protocol"] == "fixed":
        return f"(HTTP only: {spread([v / 1000 for v in found], '{:,.0f}')} req/s)"
    return spread(found, FORMATS[metric])


def table(run: Run) -> list[str]:
    headers = ["server", *[h for _, h, _, _, _ in METRICS], "errors", "others' CPU %", "note"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, info in run["servers"].items():
        cells = [info["label"]]
        cells += [_cell(run, name, key) for key, _, _, _, _ in METRICS]
        cells += [_errors(run, name), spread(_others(run, name), "{:.0f}"), info["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    compute = [r["compute"] for r in run["rounds"] if r.get("compute")]
    for prefix, implementation in (("", "scikit-learn"), ("numpy_", "numpy (the project's)")):
        if not compute or f"{prefix}rows_1_us" not in compute[0]:
            continue
        one = spread([c[f"{prefix}rows_1_us"] for c in compute], "{:,.1f}")
        many = spread([c[f"{prefix}rows_1000_us"] for c in compute], "{:,.1f}")
        lines.append(
            f"| model compute (ceiling) | {implementation} `predict_proba`, in-process: "
            f"1 row {one} µs, 1000 rows {many} µs |" + " |" * (len(headers) - 2)
        )
    return lines


def _verdict(found: list[float], goal: Goal) -> str:
    """Met or missed, with the number of rounds that met it on their own."""
    if not found:
        return "not measured"

    def meets(ratio: float) -> bool:
        higher = HIGHER_IS_BETTER[goal.metric]
        return ratio >= goal.bound if higher else ratio <= goal.bound

    met = all(map(meets, found)) if goal.every_round else meets(statistics.median(found))
    verdict = "met" if met else "missed"
    return f"{verdict} ({sum(map(meets, found))}/{len(found)} rounds)"


def goals(run: Run) -> list[str]:
    lines = [
        "| goal | ratio, median (min–max) over rounds | verdict (rounds meeting it) |",
        "|---|---|---|",
    ]
    for goal in GOALS:
        found = ratios(run, goal.metric, goal.subject, goal.peer)
        lines.append(f"| {goal.text} | {spread(found, '{:.2f}')} | {_verdict(found, goal)} |")
    for text, metric, subject, peer in RATIOS:
        lines.append(
            f"| {text} | {spread(ratios(run, metric, subject, peer), '{:.2f}')} | (reported) |"
        )
    return lines


def markdown(run: Run) -> str:
    m = run["machine"]
    settings = run["settings"]
    others = _others(run)
    lines = [
        f"# Benchmark, {run['mode']} run of {run['date']}",
        "",
        f"Commit `{run['commit']}` on `{run['branch']}`; {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, {m['wrk']}.",
        f"{settings['rounds']} round(s) of {settings['seconds']:g} s per point after "
        f"{settings['warmup']:g} s of warm-up, servers in rotating order; took "
        f"{run['elapsed_s'] / 60:.1f} min. wrk `-t1` on 127.0.0.1; load average at start "
        f"{' '.join(m['loadavg_at_start'])}.",
        "CPU used by other processes during the load points (% of one core, "
        f"{m['cores']} cores in all): median {statistics.median(others or [0]):.0f}, "
        f"max {max(others, default=0):.0f}.",
        "",
        "Medians over rounds, (min–max) when there are several. CPU is the whole server "
        "process tree's user+system time per request; RSS the whole tree's, highest of the run; "
        "others' CPU: what other processes took during that server's load points, in % of one "
        "core.",
        "",
        *table(run),
        "",
        "## Ratios and goals (per-round ratios, project / peer; the issue that set each goal)",
        "",
        *goals(run),
    ]
    problems = {name: _problems(run, name) for name in run["servers"]}
    lines += ["", "## Contract checks and failures", ""]
    if any(problems.values()):
        lines += [f"- {name}: {'; '.join(found)}" for name, found in problems.items() if found]
    else:
        lines.append(
            "Every server passed its checks before each measurement: right answers to the "
            "benchmark's bodies, 401 without a key, 400 on bad input (MLServer: answer shapes "
            "only; the bare ASGI ceiling: none)."
        )
    return "\n".join(lines) + "\n"


def _colour(name: str, info: dict[str, str]) -> str:
    if name.startswith("project"):
        return "tab:orange"
    return "tab:gray" if info["protocol"] == "fixed" else "tab:blue"


def chart(run: Run, path: Path) -> None:
    """Medians with min-max whiskers, one panel per headline metric (log scales but memory)."""
    shown = ("c64_rps", "c64_p99", "c1_p50", "batch_rows", "cpu_us", "rss")
    titles = {key: header for key, header, _, _, _ in METRICS}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, key in zip(axes.flat, shown, strict=True):
        names, medians, low, high, colours = [], [], [], [], []
        for name, info in run["servers"].items():
            found = values(run, name, key)
            if found and not (key == "batch_rows" and info["protocol"] == "fixed"):
                median = statistics.median(found)
                names.append(info["label"])
                medians.append(median)
                low.append(median - min(found))
                high.append(max(found) - median)
                colours.append(_colour(name, info))
        ax.barh(names, medians, xerr=[low, high], color=colours, capsize=3)
        if key != "rss":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_yaxis()
        ax.set_title(titles[key].replace("`", ""))
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(
        f"iris-bento benchmark, {run['mode']} run {run['date']}, commit {run['commit']} "
        "(orange: project, grey: ceiling)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(run: Run, folder: Path) -> str:
    """Write results.md and results.png to `folder`; return the Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    text = markdown(run)
    (folder / "results.md").write_text(text)
    chart(run, folder / "results.png")
    return text
