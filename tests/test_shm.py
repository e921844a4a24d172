"""Large documents through shared memory between processes on one host (plait.wire.shm).

A caller's lane offers a region in /dev/shm; a server on the same host maps it, and documents of
``MIN_BYTES`` or more travel in slots of it instead of in the gRPC messages. Checked here on real
servers: the region is mapped by both ends (and no file is left), what comes back is what was sent
(or what the executor made of it) for every size, a server told not to (``PLAIT_SHM=0``) gets
documents in messages, slots are freed when answered (timed out requests included), a malformed
slot gets an error that says what is wrong while the stream goes on, and shared memory is no way
around a server's message size limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from executors import Emb, Text

from plait import Client, Deployment, DocList, Flow
from plait.docs import decode_docs, encode_docs
from plait.errors import DeadlineExceededError, PayloadTooLargeError, UnavailableError
from plait.wire import SERVICE_NAME, shm
from plait.wire import plait_pb2 as pb

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="no /dev/shm on this system"),
]

H = "127.0.0.1"


def texts(n: int, size: int) -> DocList[Text]:
    return DocList[Text]([Text(text=f"{i:05d}" + "x" * size) for i in range(n)])


def mapped_regions(pid: int, *, deleted: bool = True) -> set[str]:
    """The plait regions process ``pid`` has mapped whose files are unlinked ("(deleted)" in its
    maps), or, with ``deleted=False``, still there."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if f"{shm.SHM_DIR}/{shm.PREFIX}" in line and line.endswith("(deleted)") == deleted:
            found.add(line.split(f"{shm.SHM_DIR}/", 1)[1].split()[0])
    return found


def region_files(pid: int) -> list[str]:
    return [n for n in os.listdir(shm.SHM_DIR) if n.startswith(f"{shm.PREFIX}{pid}-")]


def lanes_of(client: Client) -> list[object]:
    """The gRPC client's open lanes (plait.wire.lanes._Lane)."""
    mux = client._async._transport._mux  # type: ignore[attr-defined]
    return [lane for lane in mux._lanes if lane is not None]


# -- the region itself -------------------------------------------------------------------------


def test_slots_are_allocated_first_fit_in_pages_and_freed_extents_join() -> None:
    region = shm.Region.create(size=64 * 1024)
    assert region is not None
    try:
        region.unlink()
        a = region.alloc(5000)  # two pages
        b = region.alloc(4096)
        c = region.alloc(1)
        assert a == (4096, 8192) and b == (12288, 4096) and c == (16384, 4096)
        assert region.alloc(64 * 1024) is None  # more than is left
        region.free(b[0])
        assert region.alloc(8192) == (20480, 8192)  # b's page alone is too small: after c
        assert region.alloc(4096) == (12288, 4096)  # b's page again
        for slot in (a, (12288, 4096), c, (20480, 8192)):
            region.free(slot[0])
        assert region.slots_in_use == 0
        # Everything joined back into one extent: the whole region (less its header page) fits.
        assert region.alloc(64 * 1024 - 4096) == (4096, 60 * 1024)
        region.write(4096, b"hello")
        assert region.read(4096, 5) == b"hello"
        assert not region.holds(0, 10)  # the header page holds the token
        assert not region.holds(60 * 1024, 8 * 1024)
    finally:
        region.close()
    assert region.alloc(10) is None  # closed


def test_a_region_reserves_its_pages_before_slots_use_them_and_a_full_dev_shm_refuses_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    region = shm.Region.create(size=4 * 1024 * 1024)
    assert region is not None
    try:
        region.unlink()
        reserved: list[tuple[int, int]] = []
        real = os.posix_fallocate

        def fallocate(fd: int, offset: int, length: int) -> None:
            if offset + length > 2 * 1024 * 1024:  # /dev/shm is full past 2 MiB
                raise OSError(28, "No space left on device")
            reserved.append((offset, length))
            real(fd, offset, length)

        monkeypatch.setattr(shm.os, "posix_fallocate", fallocate)
        first = region.alloc(100_000)
        assert first is not None and reserved == [(4096, 1024 * 1024 - 4096)]  # up to the first MiB
        assert region.alloc(100_000) is not None and len(reserved) == 1  # within what is reserved
        assert region.alloc(1_500_000) is not None  # reaches into the second MiB: reserved too
        assert reserved[-1] == (1024 * 1024, 1024 * 1024)
        # Past what /dev/shm can back: no slot (the request goes in its message), nothing leaks.
        assert region.alloc(1_000_000) is None
        assert region.slots_in_use == 3
        region.free(first[0])
        assert region.alloc(100_000) == first  # the freed slot, already backed
    finally:
        region.close()


def test_a_server_maps_only_a_plait_region_whose_token_matches(tmp_path: Path) -> None:
    region = shm.Region.create(size=16 * 1024)
    assert region is not None
    try:
        (offer,) = region.offer()
        assert offer[0] == shm.SHM_KEY
        attached = shm.Region.attach(offer[1])
        assert attached is not None and attached.size == region.size
        attached.write(8192, b"from the server")
        assert region.read(8192, 15) == b"from the server"
        attached.close()

        path, token = offer[1].split("#")
        assert shm.Region.attach(f"{path}#{'00' * 16}") is None  # another token
        assert shm.Region.attach(f"{path}#nothex") is None
        assert shm.Region.attach(path) is None  # no token
        outside = tmp_path / "plait-1-x"
        outside.write_bytes(bytes(16 * 1024))
        assert shm.Region.attach(f"{outside}#{token}") is None  # not in /dev/shm
        assert shm.Region.attach(f"{shm.SHM_DIR}/../{path[len(shm.SHM_DIR) + 1 :]}#{token}") is None
        assert shm.Region.attach(f"{shm.SHM_DIR}/plait-0-missing#{token}") is None
    finally:
        region.unlink()
        region.close()
    assert not os.path.exists(path)


def test_regions_left_by_processes_that_are_gone_are_swept() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(shm.SHM_DIR) / f"{shm.PREFIX}{gone.pid}-deadbeef"
    mine = Path(shm.SHM_DIR) / f"{shm.PREFIX}{os.getpid()}-cafe"
    stale.write_bytes(b"")
    mine.write_bytes(b"")
    try:
        assert shm.sweep() >= 1
        assert not stale.exists()
        assert mine.exists()  # this process is alive
    finally:
        for path in (stale, mine):
            path.unlink(missing_ok=True)


# -- on real servers ---------------------------------------------------------------------------


def test_large_docs_go_through_a_region_mapped_by_both_ends_and_come_back_whole() -> None:
    with Deployment(uses="executors:Echo", host=H, quiet=True) as dep, Client(H, dep.port) as client:
        (replica,) = dep.children
        # Below MIN_BYTES, around it, several slots' worth, and larger than a whole region.
        for n, size in ((3, 100), (30, 1200), (200, 2000), (10, shm.REGION_BYTES // 8)):
            docs = texts(n, size)
            out = client.post("/echo", docs, return_type=DocList[Text], request_size=n)
            assert [d.text for d in out] == [d.text for d in docs], (n, size)
        (lane,) = lanes_of(client)
        mine = os.path.basename(lane.shared.region.path)  # type: ignore[attr-defined]
        assert mine in mapped_regions(os.getpid())
        assert mine in mapped_regions(replica.pid), "the replica did not map the client's region"
        # Unlinked once the server mapped it: no file is left to outlive a crash.
        assert mapped_regions(os.getpid(), deleted=False) == set()
        assert region_files(os.getpid()) == []
        # Every slot was freed as its response came back.
        assert [lane.shared.region.slots_in_use for lane in lanes_of(client)] == [0]  # type: ignore[attr-defined]
        # What an executor makes of the documents comes back through the slot too.
        vectors = np.arange(200 * 64, dtype=np.float32).reshape(200, 64)
        embs = DocList[Emb]([Emb(text=str(i), embedding=vectors[i]) for i in range(200)])
        doubled = client.post("/embed", embs, return_type=DocList[Emb], request_size=100)
        assert np.array_equal(np.stack([d.embedding for d in doubled]), vectors * 2)
    assert mine not in mapped_regions(os.getpid())  # unmapped as the client closed


def test_a_server_with_shared_memory_off_gets_the_docs_in_messages() -> None:
    with (
        Deployment(uses="executors:Echo", host=H, quiet=True, env={"PLAIT_SHM": "0"}) as dep,
        Client(H, dep.port) as client,
    ):
        (replica,) = dep.children
        docs = texts(100, 1000)
        out = client.post("/echo", docs, return_type=DocList[Text], request_size=100)
        assert [d.text for d in out] == [d.text for d in docs]
        assert mapped_regions(replica.pid) == set()
        assert [lane.shared for lane in lanes_of(client)] == [None]  # type: ignore[attr-defined]
        assert region_files(os.getpid()) == []  # the offer's file is gone all the same


def test_a_timed_out_requests_slot_is_freed_once_the_server_has_stopped_it() -> None:
    with Deployment(uses="executors:Echo", host=H, quiet=True) as dep, Client(H, dep.port) as client:
        docs = texts(50, 1000)
        for _ in range(3):
            with pytest.raises(DeadlineExceededError):
                client.post("/sleep", docs, parameters={"seconds": 2.0}, timeout=0.3, request_size=50)
        (lane,) = lanes_of(client)
        # The caller's cancel stops the request; the server answers it (empty) once it will not
        # write into the slot, and only then is the slot free for another request.
        deadline = time.monotonic() + 5
        while lane.shared.region.slots_in_use and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.02)
        assert lane.shared.region.slots_in_use == 0  # type: ignore[attr-defined]
        out = client.post("/echo", docs, return_type=DocList[Text], request_size=50)
        assert [d.text for d in out] == [d.text for d in docs]
        assert lane.shared.region.slots_in_use == 0  # type: ignore[attr-defined]


async def _raw_stream(port: int, offer: tuple[tuple[str, str], ...]) -> None:
    """Scripted slots on one ProcessStream to a real replica, as a caller of another language would."""
    big = encode_docs(texts(40, 1000))
    region = shm.Region.create(size=1024 * 1024)
    assert region is not None
    async with grpc.aio.insecure_channel(f"{H}:{port}") as channel:
        call = channel.stream_stream(
            f"/{SERVICE_NAME}/ProcessStream",
            request_serializer=pb.Request.SerializeToString,
            response_deserializer=pb.Response.FromString,
        )(metadata=region.offer() if offer else ())
        mapped = dict(await call.initial_metadata()).get(shm.SHM_KEY)
        region.unlink()
        assert mapped == ("1" if offer else None)

        async def ask(request: pb.Request) -> pb.Response:
            await call.write(request)
            response = await call.read()
            assert isinstance(response, pb.Response)
            return response

        slot = region.alloc(shm.ROOM + len(big))
        assert slot is not None
        region.write(slot[0] + shm.ROOM, big)  # the ROOM bytes before the docs are the reader's
        shared = pb.Shared(offset=slot[0] + shm.ROOM, length=len(big), capacity=slot[1] - shm.ROOM)
        good = await ask(pb.Request(request_id="a", endpoint="/echo", shared=shared))
        if not offer:
            assert b"no region is mapped" in good.error
            assert not good.HasField("shared")
        else:
            assert good.HasField("shared") and not good.docs and not good.error
            assert good.shared.offset == slot[0] + shm.ROOM
            echoed = region.read(good.shared.offset, good.shared.length)
            assert [d.text for d in decode_docs(echoed, Text)] == [d.text for d in decode_docs(big, Text)]
            outside = pb.Shared(offset=region.size - 100, length=4096, capacity=4096)
            bad = await ask(pb.Request(request_id="b", endpoint="/echo", shared=outside))
            assert b"BadRequestError" in bad.error and b"outside the region" in bad.error
            header = pb.Shared(offset=0, length=100, capacity=4096)
            bad = await ask(pb.Request(request_id="c", endpoint="/echo", shared=header))
            assert b"outside the region" in bad.error
            huge = pb.Shared(offset=4096, length=10**12, capacity=4096)
            bad = await ask(pb.Request(request_id="d", endpoint="/echo", shared=huge))
            assert b"PayloadTooLargeError" in bad.error and b"max_message_size" in bad.error
        # The stream goes on: a plain request after the failed ones.
        plain = await ask(pb.Request(request_id="e", endpoint="/echo", docs=big))
        assert plain.docs == big and not plain.error
        await call.done_writing()
    region.close()


def test_a_malformed_slot_is_answered_with_what_is_wrong_and_the_stream_goes_on() -> None:
    with Deployment(uses="executors:Echo", host=H, quiet=True) as dep:
        asyncio.run(_raw_stream(dep.port, offer=(("x", "y"),)))
        asyncio.run(_raw_stream(dep.port, offer=()))  # a slot on a stream that offered no region


def test_shared_memory_does_not_get_around_the_servers_message_size_limit() -> None:
    limit = 256 * 1024
    with (
        Deployment(uses="executors:Echo", host=H, quiet=True, max_message_size=limit) as dep,
        Client(H, dep.port) as client,
    ):
        with pytest.raises(PayloadTooLargeError, match="max_message_size"):
            client.post("/echo", texts(1, limit + 1000), request_size=1)
        docs = texts(100, 1000)  # under the limit: through the region
        assert [d.text for d in client.post("/echo", docs, return_type=DocList[Text])] == [
            d.text for d in docs
        ]
        (lane,) = lanes_of(client)
        assert lane.shared is not None and lane.shared.region.slots_in_use == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["grpc", "http", "websocket"])
def test_a_flow_passes_large_docs_between_its_executors_through_regions(protocol: str) -> None:
    flow = (
        Flow(host=H, quiet=True, protocol=protocol)
        .add(name="first", uses="executors:Echo")
        .add(name="second", uses="executors:Echo")
    )
    vectors = np.random.default_rng(0).random((300, 512), dtype=np.float32)
    embs = DocList[Emb]([Emb(text=str(i), embedding=vectors[i]) for i in range(300)])
    with flow, Client(H, flow.port, protocol=protocol) as client:
        out = client.post("/embed", embs, return_type=DocList[Emb], request_size=100)
        assert [d.text for d in out] == [str(i) for i in range(300)]
        assert np.array_equal(np.stack([d.embedding for d in out]), vectors * 4)  # doubled twice
        pids = {child.label: child.pid for child in flow.children}
        gateway = mapped_regions(pids["gateway"])
        assert gateway & mapped_regions(pids["first"]) and gateway & mapped_regions(pids["second"])


# -- plait's WebSocket client and a gateway on this host ---------------------------------------


def ws_connections_of(client: Client) -> list[object]:
    """The WebSocket client's connections (plait.client.websocket_transport._Connection)."""
    return list(client._async._transport._connections)  # type: ignore[attr-defined]


def test_the_websocket_client_passes_large_docs_to_a_local_gateway_through_a_region() -> None:
    flow = Flow(host=H, quiet=True, protocol="websocket").add(name="only", uses="executors:Echo")
    with flow, Client(H, flow.port, protocol="websocket") as client:
        gateway = next(child.pid for child in flow.children if child.label == "gateway")
        for n, size in ((3, 100), (100, 1000), (10, shm.REGION_BYTES // 8)):
            docs = texts(n, size)
            out = client.post("/echo", docs, return_type=DocList[Text], request_size=n)
            assert [d.text for d in out] == [d.text for d in docs], (n, size)
        (connection,) = ws_connections_of(client)
        shared = connection.shared  # type: ignore[attr-defined]
        assert shared is not None and shared.region.slots_in_use == 0
        mine = os.path.basename(shared.region.path)
        assert mine in mapped_regions(os.getpid()) and mine in mapped_regions(gateway)
        assert region_files(os.getpid()) == []
        # A request that times out keeps its slot until the gateway's own timeout reply frees it.
        with pytest.raises(DeadlineExceededError):
            client.post("/sleep", texts(50, 1000), parameters={"seconds": 2.0}, timeout=0.3, request_size=50)
        deadline = time.monotonic() + 5
        while shared.region.slots_in_use and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shared.region.slots_in_use == 0
        docs = texts(50, 1000)
        assert [d.text for d in client.post("/echo", docs, return_type=DocList[Text])] == [
            d.text for d in docs
        ]
    assert mine not in mapped_regions(os.getpid())


async def _raw_websocket(port: int) -> None:
    """Scripted slots on one WebSocket to a gateway, as another client would send them."""
    from websockets.asyncio.client import connect

    big = encode_docs(texts(40, 1000))
    region = shm.Region.create(size=1024 * 1024)
    assert region is not None
    async with connect(f"ws://{H}:{port}/", additional_headers=list(region.offer()), proxy=None) as ws:
        region.unlink()
        assert ws.response is not None and ws.response.headers.get(shm.SHM_KEY) == "1"

        async def ask(request: pb.Request) -> pb.Response:
            """The reply: a binary Response, or (an unreadable request) the JSON error frame as one."""
            await ws.send(request.SerializeToString())
            reply = await ws.recv()
            if isinstance(reply, str):
                frame = json.loads(reply)
                return pb.Response(request_id=frame["request_id"], error=json.dumps(frame["error"]).encode())
            return pb.Response.FromString(reply)

        slot = region.alloc(shm.ROOM + len(big))
        assert slot is not None
        region.write(slot[0] + shm.ROOM, big)  # the ROOM bytes before the docs are the reader's
        shared = pb.Shared(offset=slot[0] + shm.ROOM, length=len(big), capacity=slot[1] - shm.ROOM)
        good = await ask(pb.Request(request_id="a", endpoint="/echo", shared=shared))
        assert good.HasField("shared") and not good.docs and not good.error
        echoed = region.read(good.shared.offset, good.shared.length)
        assert [d.text for d in decode_docs(echoed, Text)] == [d.text for d in decode_docs(big, Text)]
        outside = pb.Shared(offset=region.size - 100, length=4096, capacity=4096)
        bad = await ask(pb.Request(request_id="b", endpoint="/echo", shared=outside))
        assert b"BadRequestError" in bad.error and b"outside the region" in bad.error
        huge = pb.Shared(offset=4096, length=10**12, capacity=4096)
        bad = await ask(pb.Request(request_id="c", endpoint="/echo", shared=huge))
        assert b"PayloadTooLargeError" in bad.error and b"max_request_bytes" in bad.error
        plain = await ask(pb.Request(request_id="d", endpoint="/echo", docs=big))
        assert plain.docs == big and not plain.error
        # A slotted request stopped by a cancel frame is answered, empty, so the slot can be reused.
        slow = pb.Request(request_id="s", endpoint="/sleep", parameters=b'{"seconds": 20}', shared=shared)
        await ws.send(slow.SerializeToString())
        await asyncio.sleep(0.2)
        await ws.send(json.dumps({"request_id": "s", "cancel": True}))
        ack = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(ack, bytes)
        acked = pb.Response.FromString(ack)
        assert acked.request_id == "s" and not acked.docs and not acked.error and not acked.HasField("shared")
    # Without an offer, a slot is an error too, and the connection goes on.
    async with connect(f"ws://{H}:{port}/", proxy=None) as ws:
        assert ws.response is not None and ws.response.headers.get(shm.SHM_KEY) is None
        await ws.send(pb.Request(request_id="e", endpoint="/echo", shared=shared).SerializeToString())
        reply = await ws.recv()
        assert isinstance(reply, str) and "no region is mapped" in json.loads(reply)["error"]["message"]
        await ws.send(pb.Request(request_id="f", endpoint="/echo", docs=big).SerializeToString())
        reply = await ws.recv()
        assert isinstance(reply, bytes) and pb.Response.FromString(reply).docs == big
    region.close()


def test_a_gateway_answers_a_malformed_websocket_slot_with_what_is_wrong_and_serves_on() -> None:
    flow = Flow(host=H, quiet=True, protocol="websocket").add(name="only", uses="executors:Echo")
    with flow:
        asyncio.run(_raw_websocket(flow.port))


def test_a_websocket_client_that_cannot_connect_keeps_no_region_open() -> None:
    from plait.client.websocket_transport import _Connection
    from plait.orchestrate.process import free_port

    async def reconnect_many_times() -> None:
        connection = _Connection(f"{H}:{free_port(H)}", None)  # nothing listens there
        for _ in range(10):
            with pytest.raises(UnavailableError):
                await connection.socket()

    fds = len(os.listdir("/proc/self/fd"))
    asyncio.run(reconnect_many_times())
    assert len(os.listdir("/proc/self/fd")) <= fds + 1  # each failed connect closed its region's file
    assert region_files(os.getpid()) == []
