"""Executors used by the integration tests. Module level, so executor processes can import them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel

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
