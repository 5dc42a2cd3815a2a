"""A session client: opens a session, finalizes N utterances at a speaker's pace and
prints the outcomes in order; with --json a last line {"sent", "received", "in_order"}.

    python examples/session_client.py --redis-url redis://127.0.0.1:6379 --utterances 50 --json
"""

from __future__ import annotations

import argparse
import json
import uuid

import anyio

from eventsched import CellKeys, SessionClient, connect, principal_of


async def main(args: argparse.Namespace) -> None:
    client = connect(args.redis_url)
    indexes: list[int] = []
    principal = principal_of(client)  # a confined gateway's user names its cell
    keys = CellKeys(args.cell or (principal.cell if principal else "c0"))
    async with SessionClient(client, keys) as gateway:
        session = await gateway.open(f"demo-{uuid.uuid4().hex[:8]}", args.src, args.tgt)

        async def speak() -> None:
            for index in range(args.utterances):
                await session.finalize(index, "pause", f"audio/{index}.opus", 1200)
                await anyio.sleep(args.gap_ms / 1000)

        async with anyio.create_task_group() as group:
            group.start_soon(speak)
            with anyio.move_on_after(args.timeout_s):
                async for outcome in session.outcomes():
                    indexes.append(outcome.utterance_index)
                    if not args.json:
                        text = outcome.nmt_text or f"({outcome.status}: {outcome.reason})"
                        print(f"{outcome.utterance_index:>4} {outcome.status:<8} {text}")
                    if len(indexes) == args.utterances:
                        break
        await session.close()
    await client.aclose()
    if args.json:
        in_order = indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
        print(json.dumps({"sent": args.utterances, "received": len(indexes), "in_order": in_order}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An eventsched session, from the gateway side.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--cell", help="default: the URL user's cell, else c0")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="zh")
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--gap-ms", type=int, default=150, help="pause between finalizes")
    parser.add_argument("--timeout-s", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    anyio.run(main, parser.parse_args())
