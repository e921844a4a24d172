"""Executors used by the integration tests. Module level, so executor processes can import them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel, Field

from plait import DocList, Document, Executor, requests
from plait.typing import NdArray


class Text(Document):
    text: str = ""


class Emb(Document):
    text: str = ""
    embedding: NdArray | None = None


class Token(Document):
    text: str = ""
    index: int = 0


class TopK(BaseModel):
    k: int = 3


class Upper(Executor):
    @requests(on="/upper")
    def upper(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        for d in docs:
            d.text = d.text.upper()
        return docs


class Echo(Executor):
    """Echoes docs; reports who served them; raises, sleeps or streams on request."""

    def __init__(self, greeting: str = "hello", **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.greeting = greeting

    @requests(on="/echo")
    async def echo(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        return docs

    @requests(on="/whoami")
    async def whoami(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        for d in docs:
            d.text = f"{self.runtime_args.name}:{self.runtime_args.replica_id}:{os.getpid()}"
        return docs

    @requests(on="/greet")
    def greet(self, docs: DocList[Text], parameters: dict[str, object], **kwargs: object) -> None:
        suffix = parameters.get("suffix", "")
        for d in docs:
            d.text = f"{self.greeting} {d.text}{suffix}"

    @requests(on="/fail")
    async def fail(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        raise ValueError("boom: this executor failed on purpose")

    @requests(on="/sleep")
    async def sleep(
        self, docs: DocList[Text], parameters: dict[str, float], **kwargs: object
    ) -> DocList[Text]:
        await asyncio.sleep(float(parameters.get("seconds", 0.5)))
        return docs

    @requests(on="/sync_sleep")
    def sync_sleep(
        self, docs: DocList[Text], parameters: dict[str, float], **kwargs: object
    ) -> DocList[Text]:
        time.sleep(float(parameters.get("seconds", 0.5)))
        return docs

    @requests(on="/count")
    async def count(self, docs: DocList[Text], **kwargs: object) -> dict[str, int]:
        return {"n": len(docs)}

    @requests(on="/topk")
    async def topk(self, docs: DocList[Text], parameters: TopK, **kwargs: object) -> DocList[Text]:
        for d in docs:
            d.text = f"k={parameters.k}"
        return docs

    @requests(on="/embed")
    async def embed(self, docs: DocList[Emb], **kwargs: object) -> DocList[Emb]:
        for d in docs:
            if d.embedding is not None:
                d.embedding = d.embedding * 2
        return docs

    @requests(on="/tokens")
    async def tokens(self, doc: Text, parameters: dict[str, int], **kwargs: object) -> AsyncIterator[Token]:
        for i in range(int(parameters.get("n", 5))):
            yield Token(text=f"{doc.text}-{i}", index=i)

    @requests(on="/sync_tokens")
    def sync_tokens(self, doc: Text, **kwargs: object) -> Iterator[Token]:
        for i in range(3):
            yield Token(text=f"{doc.text}-{i}", index=i)

    @requests(on="/per_doc")
    def per_doc(self, doc: Text, **kwargs: object) -> Text:
        return Text(id=doc.id, text=doc.text[::-1])

    @requests(on="/bad_return")
    async def bad_return(self, docs: DocList[Text], **kwargs: object) -> object:
        return 42

    @requests(on="/crash")
    async def crash(self, docs: DocList[Text], **kwargs: object) -> None:
        os._exit(3)


class FailsAtInit(Executor):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        raise RuntimeError("model weights not found: /nowhere/model.bin")


class SlowInit(Executor):
    def __init__(self, seconds: float = 30.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        print("loading a very slow model", flush=True)
        time.sleep(seconds)

    @requests
    def default(self, docs: DocList[Text], **kwargs: object) -> None:
        return None


# -- Flow test executors ---------------------------------------------------------------------


class Doc(Document):
    text: str = ""
    a: str | None = None
    b: str | None = None
    tag: int = 0


class Match(Document):
    text: str = ""
    score: float = 0.0


class Query(Document):
    text: str = ""
    matches: DocList[Match] = Field(default_factory=DocList[Match])


class Exclaim(Executor):
    @requests(on="/upper")
    def exclaim(self, docs: DocList[Text], parameters: dict[str, str], **kwargs: object) -> None:
        for d in docs:
            d.text = d.text + parameters.get("mark", "!")

    @requests(on="/stats")
    def stats(self, docs: DocList[Text], **kwargs: object) -> dict[str, int]:
        return {"exclaimed": len(docs)}


class Counter(Executor):
    """Serves /upper too, counting docs; `/stats` reports under its own name."""

    @requests(on="/upper")
    def upper(self, docs: DocList[Text], parameters: dict[str, str], **kwargs: object) -> None:
        for d in docs:
            d.text = d.text.upper() + parameters.get("mark", "")

    @requests(on="/stats")
    def stats(self, docs: DocList[Text], **kwargs: object) -> dict[str, int]:
        return {"counted": len(docs)}


class Pass(Executor):
    @requests
    async def passthrough(self, docs: DocList[Doc], **kwargs: object) -> DocList[Doc]:
        return docs


class SetA(Executor):
    @requests
    async def set_a(self, docs: DocList[Doc], **kwargs: object) -> DocList[Doc]:
        for d in docs:
            d.a = "A"
        return docs


class SetB(Executor):
    @requests
    async def set_b(self, docs: DocList[Doc], **kwargs: object) -> DocList[Doc]:
        for d in docs:
            d.b = "B"
        return docs


class Joiner(Executor):
    @requests
    async def join(
        self, docs: DocList[Doc], docs_matrix: list[DocList[Doc]], **kwargs: object
    ) -> DocList[Doc]:
        for d in docs:
            d.text = f"{d.text}|branches={len(docs_matrix)}"
        return docs


class Tagger(Executor):
    """Marks the docs it sees, so a `when` condition's effect is visible."""

    @requests
    async def tag(self, docs: DocList[Doc], **kwargs: object) -> DocList[Doc]:
        for d in docs:
            d.a = "seen"
        return docs


class ShardIndexer(Executor):
    """Each shard answers /search with one match scored by its shard id, and /index with its id."""

    @requests(on="/search")
    async def search(self, docs: DocList[Query], **kwargs: object) -> DocList[Query]:
        shard = self.runtime_args.shard_id
        for d in docs:
            d.matches = DocList[Match]([Match(id=f"m{shard}", text=f"shard {shard}", score=float(shard))])
        return docs

    @requests(on="/index")
    async def index(self, docs: DocList[Query], **kwargs: object) -> DocList[Query]:
        for d in docs:
            d.text = f"indexed by shard {self.runtime_args.shard_id}"
        return docs


def _leave_marker(path: str) -> None:
    """Writes "cancelled" to `path` atomically: a test polling for the file never reads it half-written."""
    with open(path + ".part", "w") as f:
        f.write("cancelled")
    os.replace(path + ".part", path)


class Cancellable(Executor):
    """`/wait` sleeps; if the request is cancelled it leaves a marker file in the workspace."""

    @requests(on="/wait")
    async def wait(self, docs: DocList[Text], parameters: dict[str, str], **kwargs: object) -> DocList[Text]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            _leave_marker(parameters["marker"])
            raise
        return docs

    @requests(on="/fail_mid_flow")
    async def fail(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        raise RuntimeError("mid-flow failure")

    @requests(on="/drip")
    async def drip(self, doc: Text, parameters: dict[str, str], **kwargs: object) -> AsyncIterator[Token]:
        """Yields a token every 50 ms, for up to 10 s; leaves a marker file when cancelled."""
        try:
            for i in range(200):
                yield Token(text=str(i), index=i)
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, GeneratorExit):
            _leave_marker(parameters["marker"])
            raise


class Sleeper(Executor):
    """Sleeps `seconds` (default 1) on any endpoint: shows that parallel branches overlap."""

    @requests
    async def sleep(self, docs: DocList[Doc], parameters: dict[str, float], **kwargs: object) -> DocList[Doc]:
        await asyncio.sleep(float(parameters.get("seconds", 1.0)))
        return docs


class ShardCounter(Executor):
    @requests(on="/count")
    async def count(self, docs: DocList[Text], **kwargs: object) -> dict[str, int]:
        return {"shard": self.runtime_args.shard_id, "n": len(docs)}


class Resilient(Executor):
    """The same slow work, once declared idempotent and once not."""

    async def _work(self, docs: DocList[Text], parameters: dict[str, float]) -> DocList[Text]:
        await asyncio.sleep(float(parameters.get("seconds", 0.5)))
        for d in docs:
            d.text = f"{d.text}@{os.getpid()}"
        return docs

    @requests(on="/search", idempotent=True)
    async def search(
        self, docs: DocList[Text], parameters: dict[str, float], **kwargs: object
    ) -> DocList[Text]:
        return await self._work(docs, parameters)

    @requests(on="/write")
    async def write(
        self, docs: DocList[Text], parameters: dict[str, float], **kwargs: object
    ) -> DocList[Text]:
        return await self._work(docs, parameters)
