"""Executors for the dynamic batching tests. Module level, so executor processes can import them.

Each batched method stamps the documents it returns with the size of the batch it saw and a call
number, so a test can tell from the responses alone how requests were grouped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from plait import DocList, Document, Executor, dynamic_batching, requests


class Item(Document):
    text: str = ""
    batch_size: int = 0  # how many docs the method got in the call that served this doc
    call: int = 0  # which call of the method served it (1, 2, ...)
    tag: str = ""  # parameters['tag'] as the method saw it
    poison: bool = False  # makes the method raise for the whole batch


def _stamp(docs: DocList[Item], call: int, parameters: dict[str, Any]) -> None:
    if any(d.poison for d in docs):
        raise ValueError(f"poisoned batch of {len(docs)}")
    for d in docs:
        d.batch_size = len(docs)
        d.call = call
        d.tag = str(parameters.get("tag", ""))


class Batched(Executor):
    def __init__(self, work_s: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.work_s = work_s
        self.calls = 0

    def _next(self) -> int:
        self.calls += 1
        return self.calls

    @dynamic_batching(preferred_batch_size=8, timeout=50)
    @requests(on="/batch")
    async def batch(self, docs: DocList[Item], parameters: dict[str, Any], **kwargs: Any) -> DocList[Item]:
        call = self._next()
        await asyncio.sleep(self.work_s)  # the next batch fills meanwhile
        _stamp(docs, call, parameters)
        return docs

    @requests(on="/sync_batch")  # the other decorator order
    @dynamic_batching(preferred_batch_size=8, timeout=50)
    def sync_batch(self, docs: DocList[Item], parameters: dict[str, Any], **kwargs: Any) -> None:
        call = self._next()
        time.sleep(self.work_s)
        _stamp(docs, call, parameters)  # returns None: the changed input docs go back

    @dynamic_batching(preferred_batch_size=64, timeout=300)
    @requests(on="/window")
    async def window(self, docs: DocList[Item], parameters: dict[str, Any], **kwargs: Any) -> DocList[Item]:
        _stamp(docs, self._next(), parameters)
        return docs

    @dynamic_batching(preferred_batch_size=4, timeout=20)
    @requests(on="/wrong_count")
    async def wrong_count(self, docs: DocList[Item], **kwargs: Any) -> DocList[Item]:
        return docs[1:]

    @requests(on="/plain")  # batched only when configured from outside
    async def plain(self, docs: DocList[Item], parameters: dict[str, Any], **kwargs: Any) -> DocList[Item]:
        call = self._next()
        await asyncio.sleep(self.work_s)
        _stamp(docs, call, parameters)
        return docs
