"""Executors for the supervision, rolling-update and GPU-placement tests (module level, so executor
processes can import them)."""

from __future__ import annotations

import os
from pathlib import Path

from plait import DocList, Document, Executor, requests


class Note(Document):
    text: str = ""


class FatalError(RuntimeError):
    """Listed in exit_on_exceptions by the tests: the replica must exit after answering."""


class Versioned(Executor):
    """Says which config (``version``) and process served a request, and what GPUs it was given."""

    def __init__(self, version: str = "v1", **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.version = version

    @requests(on="/version")
    async def report(self, docs: DocList[Note], **kwargs: object) -> DocList[Note]:
        for d in docs:
            d.text = f"{self.version}:{os.getpid()}"
        return docs

    @requests(on="/devices")
    async def devices(self, docs: DocList[Note], **kwargs: object) -> DocList[Note]:
        for d in docs:
            d.text = repr(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return docs

    @requests(on="/getenv")
    async def getenv(self, docs: DocList[Note], **kwargs: object) -> DocList[Note]:
        """Each doc's text names a variable; it comes back as that variable's value in this process."""
        for d in docs:
            d.text = repr(os.environ.get(d.text))
        return docs

    @requests(on="/fatal")
    async def fatal(self, docs: DocList[Note], **kwargs: object) -> None:
        raise FatalError("the model is in a bad state")

    @requests(on="/bad_input")
    async def bad_input(self, docs: DocList[Note], **kwargs: object) -> None:
        raise ValueError("not listed: the replica keeps serving")


class CrashesOnRestart(Executor):
    """Starts once; every later start (after a restart) fails in ``__init__``."""

    def __init__(self, marker: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        path = Path(marker)
        if path.exists():
            raise RuntimeError("crashing at start on purpose")
        path.write_text(str(os.getpid()))

    @requests(on="/version")
    async def report(self, docs: DocList[Note], **kwargs: object) -> DocList[Note]:
        for d in docs:
            d.text = f"first:{os.getpid()}"
        return docs
