"""The echo Executor every benchmark serves: the same work Jina's baseline executor does."""

from __future__ import annotations

from plait import DocList, Document, Executor, requests
from plait.typing import NdArray


class Small(Document):
    text: str = ""


class Emb(Document):
    text: str = ""
    embedding: NdArray[512] | None = None


class EchoExecutor(Executor):
    @requests(on="/echo")
    async def echo(self, docs: DocList[Small], **kwargs: object) -> DocList[Small]:
        for d in docs:
            d.text = d.text
        return docs

    @requests(on="/echo_emb")
    async def echo_emb(self, docs: DocList[Emb], **kwargs: object) -> DocList[Emb]:
        for d in docs:
            d.text = d.text
        return docs
