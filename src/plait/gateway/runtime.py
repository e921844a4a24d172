"""The gateway process: discover the executors, then serve the Flow on every configured protocol.

Lifecycle: open channels and ask every executor for its endpoints (waiting up to
``timeout_ready``), start one protocol server per protocol/port, serve until SIGTERM/SIGINT or
until the parent process goes away (see ``plait.serve.lifecycle``), then drain every server for
the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any

from plait.config import GatewayConfig
from plait.gateway.protocols import ProtocolServer, server_class
from plait.gateway.router import Router
from plait.security.checks import check_security
from plait.security.limits import bounded
from plait.serve.lifecycle import run_until_stopped
from plait.serve.limits import limited, queue_depth

if TYPE_CHECKING:
    from plait.observe.instruments import Instruments

log = logging.getLogger("plait.gateway")


class Gateway:
    """A Flow's front door: the router plus one protocol server per configured protocol."""

    def __init__(self, config: GatewayConfig, *, span_exporter: Any = None) -> None:
        """``span_exporter``: where spans go instead of OTLP when tracing (tests, in-process use)."""
        if len(config.protocols) != len(config.ports):
            raise ValueError(f"{len(config.protocols)} protocol(s) but {len(config.ports)} port(s)")
        self.config = config
        self._span_exporter = span_exporter
        self.router = Router(config)
        self.servers: list[ProtocolServer] = []
        self.instruments: Instruments | None = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        check_security(cfg.options)  # unreadable certificates or tokens fail now, not per protocol
        # Load every protocol's server (FastAPI and uvicorn for HTTP) before discovery: the
        # executors are still starting then, so the imports cost no time of their own.
        classes = [server_class(protocol) for protocol in cfg.protocols]
        await self.router.discover(cfg.timeout_ready)
        gc.freeze()  # start-up objects live as long as the process: keep full GCs short
        # One admission limit for the whole gateway, shared by every protocol it speaks; the
        # request bounds (documents per request, time) come first, so refusals cost no slot.
        admission = limited(self.router, cfg.options.max_concurrent, cfg.options.max_queue)
        processor = bounded(admission, cfg.options)
        if cfg.observe.enabled:  # only then are the metrics and tracing libraries loaded
            from plait.observe.instruments import Instruments

            instruments = self.instruments = Instruments(
                cfg.observe, name=cfg.name, role="gateway", exporter=self._span_exporter
            )
            self.router.observe(
                instruments.metrics.hop() if instruments.metrics is not None else None, instruments.tracing
            )
            if instruments.metrics is not None:
                instruments.metrics.watch_queue(queue_depth(admission))
            processor = instruments.wrap(processor)
            self.metrics_port = instruments.serve_metrics(cfg.host)
        for cls, port in zip(classes, cfg.ports, strict=True):
            server = cls(processor, cfg.host, port, cfg.options)
            await server.start()
            self.servers.append(server)
        addrs = ", ".join(
            f"{p}://{cfg.host}:{port}" for p, port in zip(cfg.protocols, cfg.ports, strict=True)
        )
        log.info("gateway %r ready on %s", cfg.name, addrs)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        grace = self.config.options.grace_period
        await asyncio.gather(*(server.stop(grace) for server in self.servers), return_exceptions=True)
        await self.router.close()
        if self.instruments is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.instruments.close)
        log.info("gateway %r stopped", self.config.name)

    async def serve(self) -> None:
        await run_until_stopped(
            self.start,
            self.stop,
            self._stop,
            parent_pid=self.config.parent_pid,
            who=f"gateway {self.config.name!r}",
        )


async def serve_gateway(config: GatewayConfig) -> None:
    """Entry point of a gateway process (``plait gateway``)."""
    await Gateway(config).serve()
