"""Executors for the examples: a text encoder with no model download, and a token streamer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import numpy as np

from plait import DocList, Document, Executor, requests
from plait.typing import NdArray


class Text(Document):
    text: str = ""
    embedding: NdArray | None = None


class Token(Document):
    text: str = ""


class HashEncoder(Executor):
    """Embeds text as a normalized bag of hashed words: deterministic, instant, no weights."""

    def __init__(self, dim: int = 64, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.dim = dim

    def _embed(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().split():
            bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
            vec[bucket % self.dim] += 1.0
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec

    @requests(on="/encode")
    def encode(self, docs: DocList[Text], **kwargs: object) -> DocList[Text]:
        """Set each document's embedding."""
        for d in docs:
            d.embedding = self._embed(d.text)
        return docs

    @requests(on="/upper")
    async def upper(self, docs: DocList[Text], **kwargs: object) -> None:
        """Upper-case the text in place (returning None keeps the mutated docs)."""
        for d in docs:
            d.text = d.text.upper()

    @requests(on="/tokens")
    async def tokens(self, doc: Text, **kwargs: object) -> AsyncIterator[Token]:
        """Stream the words of one document back, one document per word."""
        for word in doc.text.split():
            yield Token(text=word)
