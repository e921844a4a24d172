"""Start-up: nothing is asked of a server before it listens (plait.gateway.router's discovery,
plait.orchestrate.process.wait_ready), so no gRPC channel enters reconnect backoff; a gateway
process imports only what routing needs."""

from __future__ import annotations

import asyncio
import http.server
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import subprocess_env
from orchestration_executors import Note

from plait import Client, DocList, Document, Flow
from plait._entry import SERVING_ENV_DEFAULTS
from plait.docs import encode_docs
from plait.docs.tensor import NdArray
from plait.gateway.router import _until_listening
from plait.orchestrate.process import _http_ready, free_port, listening


class _Vec(Document):
    v: NdArray | None = None


def test_listening_tells_an_open_port_from_a_closed_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening(f"127.0.0.1:{port}")
    assert not listening(f"127.0.0.1:{port}")  # closed now
    assert not listening("not-an-address")


def test_discovery_waits_for_a_listener_then_goes_at_once() -> None:
    port = free_port("127.0.0.1")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        opened = loop.create_future()

        async def open_later() -> asyncio.Server:
            await asyncio.sleep(0.3)
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
            opened.set_result(time.monotonic())
            return server

        later = asyncio.create_task(open_later())
        nobody = f"127.0.0.1:{free_port('127.0.0.1')}"
        await _until_listening([nobody, f"127.0.0.1:{port}"], time.monotonic() + 10)
        returned = time.monotonic()
        assert opened.done()  # not before the server listened...
        server = await later
        server.close()
        return returned - opened.result()

    waited = asyncio.run(main())
    assert waited < 5  # ...and well before the deadline (one poll after it opened, normally)


def test_discovery_gives_up_at_the_deadline_and_skips_resolved_names() -> None:
    async def main() -> None:
        start = time.monotonic()
        await _until_listening([f"127.0.0.1:{free_port('127.0.0.1')}"], start + 0.2)
        assert 0.2 <= time.monotonic() - start < 5
        start = time.monotonic()
        await _until_listening(["dns:///executor.svc:8081"], start + 10)  # the channel resolves it
        assert time.monotonic() - start < 1

    asyncio.run(main())


def test_a_gateway_process_loads_neither_numpy_nor_the_executor_side() -> None:
    # The gateway's whole import graph, every protocol server included: it routes codec bytes and
    # plain rows, so document types, numpy and the executor's handler would only cost start-up
    # time and memory.
    code = (
        "import sys, plait._entry, plait.gateway.runtime, plait.gateway.protocols\n"
        "import plait.gateway.http_server, plait.gateway.websocket_server\n"
        "from plait.config import GatewayConfig\n"
        "heavy = ('numpy', 'plait.docs.doclist', 'plait.docs.codec', 'plait.serve.handler', "
        "'plait.executor.base')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def test_a_websocket_gateway_does_not_load_fastapi() -> None:
    # FastAPI costs ~0.2 s of CPU to import; only the HTTP server (OpenAPI, Swagger UI) needs it.
    code = (
        "import sys, plait._entry, plait.gateway.runtime\n"
        "from plait.gateway.protocols import server_class\n"
        "server_class('websocket'); server_class('grpc')\n"
        "assert 'fastapi' not in sys.modules, 'websocket loaded fastapi'\n"
        "server_class('http')\n"
        "assert 'fastapi' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def test_rows_with_tensors_decode_where_numpy_was_not_loaded_yet() -> None:
    # A gateway meets its first tensor (a `when` condition, a shard merge): numpy loads then.
    payload = encode_docs(DocList[_Vec]([_Vec(v=np.arange(4, dtype=np.float32))]))
    code = (
        "import sys\n"
        "from plait.docs.rows import decode_raw, encode_raw\n"
        "from plait.gateway.conditions import compile_condition, filter_rows\n"
        "assert 'numpy' not in sys.modules\n"
        f"payload = bytes.fromhex({payload.hex()!r})\n"
        "rows = decode_raw(payload)\n"
        "assert rows[0]['v'].tolist() == [0.0, 1.0, 2.0, 3.0], rows\n"
        "assert encode_raw(rows) == payload\n"
        "import numpy as np\n"
        "cond = compile_condition({'v': {'$eq': np.arange(4, dtype=np.float32)}})\n"
        "assert len(filter_rows(rows, cond)) == 1\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_process_commands_stop_openblas_spinning_unless_the_user_says_otherwise() -> None:
    """OpenBLAS's worker threads busy-wait ~0.1 s after numpy loads and after every call unless told
    otherwise; every plait process sets a short wait (plait._entry.SERVING_ENV_DEFAULTS), and an
    executor's own ``env`` (or the user's environment) wins."""
    flow = (
        Flow(host="127.0.0.1", quiet=True, grace_period=1)
        .add(name="plain", uses="orchestration_executors:Versioned")
        .add(name="own", uses="orchestration_executors:Versioned", env={"OPENBLAS_THREAD_TIMEOUT": "28"})
    )
    seen = {}
    with flow:
        for status in flow.status():
            if status.label == "gateway":
                continue
            with Client(status.address) as client:
                seen[status.label] = client.post("/getenv", Note(text="OPENBLAS_THREAD_TIMEOUT")).text[0]
    assert seen == {"plain": repr(SERVING_ENV_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]), "own": "'28'"}


def test_http_readiness_probe_reaches_an_ipv6_address() -> None:
    """A gateway whose first protocol is HTTP is probed with ``GET /ready`` at ``[host]:port``;
    the brackets of an IPv6 literal are not part of the host to connect to."""

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server6(http.server.HTTPServer):
        address_family = socket.AF_INET6

    try:
        server = Server6(("::1", 0), Ready)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert _http_ready(f"[::1]:{port}", timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
    assert not _http_ready(f"[::1]:{port}", timeout=0.5)  # closed now
