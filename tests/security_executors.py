"""An auth check and an executor for the security tests (module level: gateway processes import them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

from plait import DocList, Document, Executor, requests
from plait.security import AuthRequest
from plait.typing import NdArray


def allow_api_key(request: AuthRequest) -> bool:
    """A custom scheme: an ``x-api-key`` header. 'raise' shows that a failing check refuses."""
    key = request.headers.get("x-api-key")
    if key == "raise":
        raise RuntimeError("the key service is down")
    return key == "let-me-in"


class Item(Document):
    text: str = ""
    count: int = 0
    score: float | None = None
    tags: list[str] = []
    vector: NdArray | None = None


class Ranked(Document):
    text: str = ""
    rank: int = 0


class Query(BaseModel):
    limit: int = Field(default=3, ge=1, le=100)
    prefix: str = Field(default="", max_length=20)


class Catalog(Executor):
    """Typed endpoints for the fuzzers: documents of several field types, a parameters model, a
    stream and a dict result. None of them fails on input that matches its schema."""

    @requests(on="/index")
    def index(self, docs: DocList[Item], **kwargs: object) -> DocList[Item]:
        for d in docs:
            d.count = len(d.text) + len(d.tags)
        return docs

    @requests(on="/search")
    def search(self, docs: DocList[Item], parameters: Query, **kwargs: object) -> DocList[Ranked]:
        return DocList[Ranked](
            [Ranked(text=parameters.prefix + d.text, rank=i) for i, d in enumerate(docs[: parameters.limit])]
        )

    @requests(on="/count")
    def count(self, docs: DocList[Item], **kwargs: object) -> dict[str, int]:
        return {"docs": len(docs)}

    @requests(on="/words")
    async def words(self, doc: Item, **kwargs: object) -> AsyncIterator[Ranked]:
        for i, word in enumerate(doc.text.split()[:50]):
            yield Ranked(text=word, rank=i)
