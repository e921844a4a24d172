"""The ``plait`` command's entry point: a short path for the process commands, the CLI for the rest.

``plait executor --config X`` and ``plait gateway --config X`` are what every process plait starts
runs, locally and in containers. They take no other flags than ``--log-level``, so they are read
here without the CLI framework (typer, click, rich): about 9 MB and 0.15 s less per process. Any
other command line, including these commands with other flags or ``--help``, goes to
:mod:`plait.cli.main`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

M = TypeVar("M")

_PROCESS_COMMANDS = ("executor", "gateway")
_PROCESS_FLAGS = ("--config", "--log-level")

SERVING_ENV_DEFAULTS = {
    # OpenBLAS (numpy's BLAS) keeps each worker thread spinning 2**28 cycles (~0.1 s) after it
    # starts and after every call: one CPU core's worth of busy-waiting per import and per request in
    # a process that shares its cores with its neighbours. 2**24 (~6 ms) still keeps the threads
    # awake between the calls of one request.
    "OPENBLAS_THREAD_TIMEOUT": "24",
}
"""Environment every process command sets before anything is imported, unless the user set it."""


def set_serving_env() -> None:
    """Set :data:`SERVING_ENV_DEFAULTS` the user did not set, before numpy loads.

    The one place plait writes the environment (a departure from DESIGN rule 2): OpenBLAS reads it
    when numpy loads, and this runs only in a process command's own main or the executor fork
    server, never in a user's process.
    """
    for name, value in SERVING_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def load_config_arg(config: str, model: type[M]) -> M:
    """A serialized config from ``--config``: JSON text, or a .json/.yml file (a ConfigMap, say)."""
    from plait.config import load_yaml

    if config.lstrip().startswith("{"):
        return model.model_validate_json(config)  # type: ignore[attr-defined, no-any-return]
    path = Path(config)
    data = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
    return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """The process's one event loop (uvloop when available)."""
    from plait._loop import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


def serve_process(kind: str, config: str) -> None:
    """Serve one executor replica or one gateway from its serialized config, until SIGTERM."""
    if kind == "executor":
        from plait.config import ReplicaConfig
        from plait.serve import serve_replica

        run_async(serve_replica(load_config_arg(config, ReplicaConfig)))
    else:
        from plait.config import GatewayConfig
        from plait.gateway.runtime import serve_gateway

        run_async(serve_gateway(load_config_arg(config, GatewayConfig)))


def process_command(args: Sequence[str]) -> tuple[str, str, str] | None:
    """``(kind, config, log_level)`` when ``args`` is a process command with only its two flags."""
    if not args or args[0] not in _PROCESS_COMMANDS:
        return None
    options: dict[str, str] = {}
    rest = list(args[1:])
    while rest:
        flag = rest.pop(0)
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif rest:
            value = rest.pop(0)
        else:
            return None
        if flag not in _PROCESS_FLAGS:
            return None
        options[flag] = value
    if "--config" not in options:
        return None
    return args[0], options["--config"], options.get("--log-level", "INFO")


def main() -> None:
    command = process_command(sys.argv[1:])
    if command is None:
        from plait.cli.main import main as cli_main

        cli_main()
        return
    kind, config, log_level = command
    set_serving_env()
    setup_logging(log_level)
    from plait.errors import PlaitError

    try:
        serve_process(kind, config)
    except (PlaitError, ValueError) as e:  # one line, as the CLI prints it, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
