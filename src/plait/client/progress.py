"""A rich progress bar for long ``post`` calls (``show_progress=True``); a no-op when disabled."""

from __future__ import annotations

from types import TracebackType

import rich.progress


class Progress:
    def __init__(self, *, enabled: bool, total: int | None, description: str) -> None:
        self._bar: rich.progress.Progress | None = None
        if enabled:
            self._bar = rich.progress.Progress(
                rich.progress.SpinnerColumn(),
                rich.progress.TextColumn("{task.description}"),
                rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(),
                rich.progress.TextColumn("requests"),
                rich.progress.TimeElapsedColumn(),
                rich.progress.TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
