"""Index ~20 sample documents into the search example, then search them.

    python examples/search/client.py [--port 12345] [--protocol grpc|http|websocket]
                                     [--limit 3] [--query TEXT ...]

Start the Flow first: python examples/search/serve.py (or `make run`). The samples are indexed
once: when the index already holds them, this only searches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from executors import Item

from plait import Client, DocList
from plait.client import Response
from plait.errors import PlaitError

DEFAULT_PORTS = {"grpc": 12345, "http": 12346, "websocket": 12347}

SENTENCES = [
    "A cat is sleeping on the sofa",
    "The kitten chased a ball of yarn across the floor",
    "A dog fetches a stick in the park",
    "Puppies need a lot of sleep and attention",
    "Boil the pasta in salted water for ten minutes",
    "Slice the tomatoes and basil for a fresh salad",
    "Bake the bread until the crust is golden brown",
    "The stock market fell sharply on Monday",
    "Interest rates were raised by the central bank",
    "The startup raised money from venture investors",
    "The football team won the championship final",
    "She ran the marathon in under three hours",
    "A tennis match lasted five sets at Wimbledon",
    "Python is a popular programming language",
    "The server answers gRPC and HTTP requests",
    "Rust programs are fast and memory safe",
]

# (text, colour): the "multimodal" samples carry an 8x8 RGB thumbnail of that colour.
PICTURES = [
    ("A red sunset over the desert", (220, 60, 30)),
    ("Blue waves of the open ocean", (20, 70, 200)),
    ("A green meadow in spring", (40, 180, 60)),
    ("Yellow sunflowers in a field", (230, 210, 40)),
]

QUERIES = ["a cat napping on the couch", "how do I cook pasta", "money and the economy"]


def thumbnail(rgb: tuple[int, int, int], size: int = 8, seed: int = 0) -> np.ndarray:
    """A tiny (size, size, 3) uint8 picture of one colour, with a little noise."""
    noise = np.random.default_rng(seed).integers(-15, 16, (size, size, 3))
    return np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)


def samples() -> DocList[Item]:
    items = [Item(id=f"sample-{i:02d}", text=text) for i, text in enumerate(SENTENCES)]
    start = len(items)
    for j, (text, rgb) in enumerate(PICTURES):
        items.append(Item(id=f"sample-{start + j:02d}", text=text, image=thumbnail(rgb, seed=j)))
    return DocList[Item](items)


def shard_counts(client: Client, attempts: int = 8) -> dict[int, int]:
    """``/count`` goes to one shard at a time (polling ANY takes turns): ask until each has answered."""
    counts: dict[int, int] = {}
    for _ in range(attempts):
        replies: list[Response] = []
        client.post("/count", on_done=replies.append)
        result = replies[0].parameters["__results__"]["indexer"]
        if result["shard"] in counts:
            break
        counts[result["shard"]] = result["count"]
    return dict(sorted(counts.items()))


def already_indexed(client: Client) -> bool:
    """True when searching for the first sample's text finds that very sample."""
    probe = client.post("/search", Item(text=SENTENCES[0]), {"limit": 1}, return_type=DocList[Item])
    return bool(probe[0].matches) and probe[0].matches[0].id == "sample-00"


def show(query: Item, label: str) -> None:
    print(f"\n{label}")
    for rank, match in enumerate(query.matches, 1):
        picture = "  [has a picture]" if match.has_image else ""
        print(f"  {rank}. {match.score:+.3f}  {match.text}{picture}")


def main() -> None:
    try:
        run()
    except PlaitError as e:
        sys.exit(f"error: {e}\n(is the Flow running? start it with: python examples/search/serve.py)")


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, help="default: 12345 (grpc), 12346 (http), 12347 (websocket)")
    ap.add_argument("--protocol", choices=sorted(DEFAULT_PORTS), default="grpc")
    ap.add_argument("--limit", type=int, default=3, help="matches per query")
    ap.add_argument("--query", action="append", help="search this text (repeatable) instead of the samples")
    args = ap.parse_args()
    port = args.port or DEFAULT_PORTS[args.protocol]

    with Client(host=args.host, port=port, protocol=args.protocol, timeout=60) as client:
        print(f"server: {args.protocol}://{args.host}:{port}")
        if already_indexed(client):
            print("the samples are indexed already: searching only")
        else:
            docs = samples()
            start = time.perf_counter()
            # Small requests, so the two indexer shards (which take turns) each get some.
            indexed = client.post("/index", docs, request_size=4, return_type=DocList[Item])
            took = time.perf_counter() - start
            print(f"indexed {len(indexed)} documents ({len(PICTURES)} with a picture) in {took:.2f}s")
        counts = shard_counts(client)
        per_shard = ", ".join(f"shard {s}: {n}" for s, n in counts.items())
        print(f"the index holds {sum(counts.values())} documents ({per_shard})")

        queries = [Item(text=q) for q in (args.query or QUERIES)]
        if not args.query:  # a picture alone: which documents look like a blue thumbnail?
            queries.append(Item(image=thumbnail((30, 80, 210), seed=99)))
        found = client.post("/search", queries, {"limit": args.limit}, return_type=DocList[Item])
        for query in found:
            show(query, f"query: {query.text!r}" if query.text else "query: (a blue picture, no text)")


if __name__ == "__main__":
    main()
