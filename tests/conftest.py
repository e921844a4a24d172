"""Shared fixtures. Servers bind 127.0.0.1 on free ports and stop by themselves."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plait import Deployment

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def echo_deployment() -> Iterator[Deployment]:
    """One Echo replica, shared by a module's tests (each test leaves it serving)."""
    with Deployment(
        uses="executors:Echo", host="127.0.0.1", name="echo", quiet=True, grace_period=2.0
    ) as dep:
        yield dep


def plait_cmd(*args: str) -> list[str]:
    """argv for the plait CLI run with this interpreter."""
    return [sys.executable, "-m", "plait", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env
