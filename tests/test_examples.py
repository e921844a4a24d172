"""The examples the README walks through run as written."""

from __future__ import annotations

import signal
import subprocess
import sys

from conftest import ROOT, plait_cmd, subprocess_env

from plait.orchestrate.process import free_port


def test_tour_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tour.py"), str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[:2] == ["HI", "1000 DOC 0 DOC 999"]


def test_serve_example_and_client_example() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "serve_example.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=subprocess_env(),
    )
    try:
        ping = subprocess.run(
            plait_cmd("ping", f"127.0.0.1:{port}", "--attempts", "60", "--timeout", "0.5"),
            capture_output=True,
            text=True,
            timeout=90,
            env=subprocess_env(),
        )
        assert ping.returncode == 0, ping.stderr
        client = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "client_example.py"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
        )
        assert client.returncode == 0, client.stderr[-3000:]
        lines = client.stdout.splitlines()
        assert lines[0] == "embeddings: (2, 64)"
        assert lines[1] == "upper: ['HELLO PLAIT', 'TYPED DOCUMENTS OVER GRPC']"
        assert lines[2] == "tokens: ['hello', 'plait']"
        assert "/encode" in lines[3]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
