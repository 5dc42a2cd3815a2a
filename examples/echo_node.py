"""An echo node: serves every stage for the languages given, sleeps a while per job and
returns made-up texts. Run several beside `eventsched worker`:

    python examples/echo_node.py --redis-url redis://127.0.0.1:6379 --node-id echo-1 \
        --langs en,zh --max-concurrency 4

With a URL from ``eventsched acl add-node NODE_ID``, the node ID and the cell are the
user's, and --node-id and --cell may be left out.
"""

from __future__ import annotations

import argparse
import signal

import anyio

from eventsched import (
    CellKeys,
    Job,
    JobOutput,
    Node,
    Services,
    StageTimings,
    connect,
    principal_of,
)


async def main(args: argparse.Namespace) -> None:
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]

    async def echo(job: Job) -> JobOutput:
        await anyio.sleep(args.work_ms / 1000)
        third = args.work_ms // 3
        return JobOutput(
            asr_text=f"[{job.src_lang}] utterance {job.utterance_index}",
            nmt_text=f"[{job.tgt_lang}] utterance {job.utterance_index}",
            tts_audio_ref=f"tts/{job.job_id}/{job.attempt}.opus",
            tts_duration_ms=600,
            timings=StageTimings(asr_ms=third, nmt_ms=third, tts_ms=third),
        )

    client = connect(args.redis_url)
    principal = principal_of(client)  # a confined node's user names its node and cell
    node_id = args.node_id or (principal.name if principal else None)
    if node_id is None:
        raise SystemExit("echo_node.py: --node-id is needed with this URL")
    cell = args.cell or (principal.cell if principal else "c0")
    node = Node(
        client,
        CellKeys(cell, principal.namespace if principal else "es"),
        node_id,
        Services(asr=langs, nmt=langs, tts=langs),
        args.max_concurrency,
        echo,
        semantic_languages=langs,
    )
    async with node:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break  # leaving the block drains: running jobs finish, then it leaves
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An eventsched node that echoes.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--cell", help="default: the URL user's cell, else c0")
    parser.add_argument("--node-id", help="default: the URL user's node")
    parser.add_argument("--langs", default="en,zh", help="every stage for these languages")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--work-ms", type=int, default=30, help="time spent per job")
    anyio.run(main, parser.parse_args())
