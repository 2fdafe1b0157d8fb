"""The yardstick: what someone would write by hand to make N Runware images, nothing more.

    python -m bench.handwritten_client --cells 300 --in-flight 50 --poll 0.25 --out DIR

asyncio + httpx against `NBP_RUNWARE_BASE_URL` with `RUNWARE_API_KEY`: create an async
`imageInference` task, poll `getResponse` until it succeeds, download the image, write it.
At most `--in-flight` tasks are created and not yet finished (the slot is freed before the
download, as nbp does). No journal, no verification, no retries, no manifest; httpx's default
connection pool. It polls every `--poll` s (0.25 by default), as someone who wants images
fast would write it; `--backoff 1.25` makes each wait 1.25x the one before instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx


async def make_one(client: httpx.AsyncClient, base: str, task: dict[str, Any], slots:
                   asyncio.Semaphore, poll: float, backoff: float, out: Path) -> None:
    task_uuid = str(uuid.uuid4())
    async with slots:
        response = await client.post(base, json=[{**task, "taskUUID": task_uuid}])
        response.raise_for_status()
        delay = poll
        while True:
            await asyncio.sleep(delay)
            delay = min(30.0, delay * backoff)
            response = await client.post(
                base, json=[{"taskType": "getResponse", "taskUUID": task_uuid}]
            )
            response.raise_for_status()
            body = response.json()
            if body.get("errors"):
                raise RuntimeError(f"task {task_uuid} failed: {body['errors']}")
            item = next(i for i in body["data"] if i.get("taskUUID") == task_uuid)
            if item.get("status") == "success":
                break
    image = await client.get(item["imageURL"])
    image.raise_for_status()
    (out / f"{task_uuid}.{task['outputFormat'].lower()}").write_bytes(image.content)


async def run(cells: int, in_flight: int, poll: float, backoff: float, out: Path,
              prompt: str, fmt: str) -> None:
    base = os.environ["NBP_RUNWARE_BASE_URL"]
    headers = {"Authorization": f"Bearer {os.environ['RUNWARE_API_KEY']}"}
    task = {
        "taskType": "imageInference", "model": "google:4@2", "positivePrompt": prompt,
        "width": 1024, "height": 1024, "outputType": "URL", "outputFormat": fmt.upper(),
        "numberResults": 1, "includeCost": True, "deliveryMethod": "async",
    }
    out.mkdir(parents=True, exist_ok=True)
    slots = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:  # httpx's own pool
        await asyncio.gather(*(
            make_one(client, base, task, slots, poll, backoff, out) for _ in range(cells)
        ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handwritten_client")
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.25, help="first poll delay, seconds")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="poll delay growth (1: a fixed interval)")
    parser.add_argument("--prompt", default="A bench of moss in a greenhouse, soft light")
    parser.add_argument("--format", default="png", choices=["png", "jpg"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(run(args.cells, args.in_flight, args.poll, args.backoff, args.out,
                    args.prompt, args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
