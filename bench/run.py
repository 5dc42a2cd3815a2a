"""Every benchmark in one run, printing a table and, with --json, one JSON object as the
last line. By default against a private redis-server started here (so INFO and MEMORY
figures count only this run); ``--redis-url`` runs against a given, quiet one, leaving
nothing behind (every key is under a ``bench*`` namespace and removed). docs/PERFORMANCE.md
explains each figure and its target.

    python bench/run.py --quick --json      # about 3.5 minutes on 2 cores
    python bench/run.py --quick --markdown  # the table for docs/PERFORMANCE.md
    python bench/run.py --from a.json b.json  # the table of runs saved with --json
    make bench                              # the full run, about 5 minutes

Figures are this machine's, noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import cast

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if __package__ in (None, ""):  # run as a script: the checkout's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import baseline, burst, e2e, fleet, plain_queue, throughput
from bench.alone import private_server
from bench.cluster_scale import measure as cluster_scale
from bench.dispatch_scale import measure as dispatch_scale
from bench.ingress_scale import measure as ingress_scale
from bench.queue_scale import measure as queue_scale
from bench.replay_speed import synthetic
from bench.service_scale import measure as service_scale
from eventsched.model.keys import CellKeys
from eventsched.ops.replay import replay
from eventsched.store.client import MEMORY_URL, Store, unlink_matching

# What docs/PERFORMANCE.md promises, as (figure, "<=" or ">=", target): issue 20's.
TARGETS = (
    ("dispatch_redis_us_100k", "<=", 25),
    ("dispatch_redis_us_ratio_100k_1k", "<=", 1.5),
    ("dispatch_call_p50_ms", "<=", 0.4),
    ("dispatch_call_p99_ms", "<=", 2),
    ("finalize_to_inbox_p50_ms", "<=", 1.5),
    ("finalize_to_inbox_p99_ms", "<=", 5),
    ("speedup_vs_baseline_10k", ">=", 300),
    ("vs_plain_queue_p50_ratio", "<=", 2),
    ("trust_boundary_overhead_p50_ratio", "<=", 1.3),
    ("apply_dispatch_per_s", ">=", 30_000),
    ("fold_heartbeat_per_s", ">=", 60_000),
    ("e2e_p99_ms_at_2000", "<=", 20),
    ("scheduler_cpu_us_per_finalize", "<=", 300),
    ("idle_node_bytes", "<=", 1024),
    ("session_bytes", "<=", 1024),
    ("replay_events_per_s_redis", ">=", 20_000),
    ("replay_events_per_s_fake", ">=", 5_000),
    ("burst_ok_share_default", ">=", 0.95),
    ("burst_wait_p99_ms", "<=", 500),
    ("queue_serve_vs_finalize_ratio", "<=", 1.5),
)


async def memory(url: str, nodes: int) -> dict[str, float]:
    """Redis bytes per idle node (its record and memberships; its inbox apart), per open
    session and per log entry, from used_memory (the log's from MEMORY USAGE)."""
    client = Store(url).client()
    keys = CellKeys("c0", "benchmem")

    async def used() -> int:
        return int((await client.info("memory"))["used_memory"])

    async def log_bytes() -> int:
        return int(await client.memory_usage(keys.log) or 0)

    try:
        await fleet.build(client, keys, 0, 0)  # the pools and the empty log
        base, base_log = await used(), await log_bytes()
        await fleet.append_chunked(client, keys, fleet.nodes(nodes))
        await fleet.append_chunked(client, keys, fleet.beats(nodes, nodes))
        await fleet.apply(client, keys)
        grown, grown_log = await used() - base, await log_bytes() - base_log
        base, base_log = await used(), await log_bytes()
        await fleet.append_chunked(client, keys, fleet.sessions(nodes))
        await fleet.apply(client, keys)
        sessions, sessions_log = await used() - base, await log_bytes() - base_log
        # the inboxes' share, by what deleting them frees (MEMORY USAGE guesses high)
        base = await used()
        await client.delete(*(keys.inbox(fleet.node_id(index)) for index in range(nodes)))
        inbox = (base - await used()) / nodes
        idle = (grown - grown_log) / nodes
        return {
            "node_bytes": round(idle - inbox),
            "node_inbox_bytes": round(inbox),
            "idle_node_bytes": round(idle),
            "session_bytes": round((sessions - sessions_log) / nodes),
            "log_entry_bytes": round((grown_log + sessions_log) / (3 * nodes)),
        }
    finally:
        await unlink_matching(client, f"{keys.namespace}:*")
        await client.aclose()


async def replay_rates(url: str, events: int) -> dict[str, float]:
    fixture = synthetic(events)
    rates: dict[str, float] = {}
    for label, target in (("fake", MEMORY_URL), ("redis", url)):
        started = time.perf_counter()
        await replay(fixture, target)
        rates[f"replay_events_per_s_{label}"] = round(
            len(fixture.entries) / (time.perf_counter() - started)
        )
    return rates


async def _dispatch_scale(url: str, quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    for size in (100, 1000, 10_000, 100_000):
        scale = await dispatch_scale(url, size, rounds=3 if quick else 10)
        label = f"{size // 1000}k" if size >= 1000 else str(size)
        figures[f"dispatch_redis_us_{label}"] = round(scale["finalize_us"], 1)
    figures["dispatch_redis_us_ratio_100k_1k"] = round(
        figures["dispatch_redis_us_100k"] / figures["dispatch_redis_us_1k"], 2
    )
    return figures


async def _e2e(url: str, quick: bool) -> dict[str, float]:
    rates = [500, 1000, 2000, 3000] if quick else [250, 500, 1000, 1500, 2000, 3000, 4000]
    return e2e.figures(await e2e.measure(url, rates, 3.0 if quick else 10.0))


Part = Callable[[str, bool], Awaitable[dict[str, float]]]
# Every part of the run, in order: (its name on the progress bar, how it runs).
PARTS: tuple[tuple[str, Part], ...] = (
    ("decision cost, 100 to 100k nodes", _dispatch_scale),
    ("the old design", lambda url, quick: baseline.compare(url, 200 if quick else 1000)),
    ("a plain queue", lambda url, quick: plain_queue.measure(url, 300 if quick else 2000)),
    ("ingress at 10k principals", lambda url, quick: ingress_scale(url, 10_000)),
    ("apply throughput", lambda url, quick: throughput.measure(url, 20_000 if quick else 100_000)),
    ("end to end at rising load", _e2e),
    ("a burst", lambda url, quick: burst.measure(url)),
    ("the queue at scale", lambda url, quick: queue_scale(url)),
    ("the HTTP face", lambda url, quick: service_scale(url)),
    ("Redis Cluster", lambda url, quick: cluster_scale(url, 4_000 if quick else 20_000)),
    ("memory", lambda url, quick: memory(url, 10_000)),
    ("replay", lambda url, quick: replay_rates(url, 10_000 if quick else 50_000)),
)


async def collect(url: str, quick: bool) -> dict[str, float]:
    """Every part's figures; a progress bar on stderr says which part runs, and a line
    per part what it took (stdout keeps the table and the JSON)."""
    figures: dict[str, float] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as progress:
        task = progress.add_task("", total=len(PARTS))
        for name, part in PARTS:
            progress.update(task, description=name)
            started = time.perf_counter()
            figures |= await part(url, quick)
            progress.console.print(f"{name}: {time.perf_counter() - started:.0f} s")
            progress.advance(task)
    return figures


def _verdict(name: str, value: float) -> tuple[str, str]:
    """(the target as text, "met" or "MISSED"), or two empty strings for a figure that has
    no target."""
    for figure, sign, target in TARGETS:
        if figure == name:
            met = value <= target if sign == "<=" else value >= target
            return f"{sign} {target}", "met" if met else "MISSED"
    return "", ""


def report(figures: dict[str, float]) -> None:
    for name, value in figures.items():
        target, verdict = _verdict(name, value)
        line = f"{name:<34}{value:>12}"
        if target:
            line += f"   target {target:<11} {verdict}"
        print(line)


def markdown(*runs: dict[str, float]) -> str:
    """The figures of one run or more (a column each) as a Markdown table, for
    docs/PERFORMANCE.md (pasted as generated), each judged by its target: met or
    MISSED in every run, or in how many."""
    heads = ["value"] if len(runs) == 1 else [f"run {i + 1}" for i in range(len(runs))]
    rows = [
        f"| figure | {' | '.join(heads)} | target | |",
        f"| --- | {'---: | ' * len(runs)}---: | --- |",
    ]
    for name in dict.fromkeys(name for run in runs for name in run):
        values = [run[name] for run in runs if name in run]
        target = _verdict(name, values[0])[0]
        met = sum(_verdict(name, value)[1] == "met" for value in values)
        verdict = "" if not target else "met" if met == len(values) else "MISSED"
        if target and 0 < met < len(values):
            verdict = f"met in {met} of {len(values)}"
        cells = " | ".join(str(run.get(name, "")) for run in runs)
        rows.append(f"| `{name}` | {cells} | {target} | {verdict} |")
    return "\n".join(rows)


def _last_json(path: str) -> dict[str, float]:
    lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
    return cast(dict[str, float], json.loads(lines[-1]))


async def main(quick: bool, as_json: bool, as_markdown: bool, redis_url: str | None) -> None:
    with private_server() if redis_url is None else nullcontext(redis_url) as url:
        figures = await collect(url, quick)
    if as_markdown:
        print(markdown(figures))
    else:
        report(figures)
    if as_json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter steps")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument(
        "--markdown", action="store_true", help="the table in Markdown (docs/PERFORMANCE.md)"
    )
    parser.add_argument(
        "--from",
        dest="saved",
        nargs="+",
        metavar="FILE",
        help="no run: the table of runs saved with --json (their last lines), a column each",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("EVENTSCHED_REDIS_URL"),
        help="a quiet Redis to run against (default: $EVENTSCHED_REDIS_URL, else a private"
        " redis-server started here)",
    )
    arguments = parser.parse_args()
    if arguments.saved:
        print(markdown(*(_last_json(path) for path in arguments.saved)))
    else:
        anyio.run(main, arguments.quick, arguments.json, arguments.markdown, arguments.redis_url)
