"""The ``plait`` command as a user runs it: real processes, signals and exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import plait_cmd, subprocess_env
from executors import Text

from plait import Client, __version__
from plait.orchestrate.process import free_port


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        plait_cmd(*args), capture_output=True, text=True, timeout=timeout, env=subprocess_env()
    )


def test_version_and_help() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"plait {__version__}"
    helptext = run_cli("--help").stdout
    for command in ("executor", "deployment", "ping"):
        assert command in helptext
    assert "--uses" in run_cli("executor", "--help").stdout


def test_executor_serves_ping_answers_and_sigterm_drains() -> None:
    port = free_port()
    proc = subprocess.Popen(
        plait_cmd(
            "executor",
            "--uses",
            "executors:Echo",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--name",
            "cli",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
    )
    try:
        ping = run_cli("ping", f"127.0.0.1:{port}", "--attempts", "40", "--timeout", "0.5")
        assert ping.returncode == 0, ping.stderr
        assert "SERVING" in ping.stdout
        with Client("127.0.0.1", port) as client:
            assert client.post("/greet", Text(text="cli")).text == ["hello cli"]
            assert client.describe().name == "cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        log = proc.stdout.read()
        assert "ready on 127.0.0.1" in log and "stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    down = run_cli("ping", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert down.returncode == 1 and "UNREACHABLE" in down.stderr


def test_executor_cli_errors_are_short_and_clear() -> None:
    out = run_cli("executor", "--uses", "executors:NoSuch", "--port", str(free_port()), "--host", "127.0.0.1")
    assert out.returncode == 1
    assert "error:" in out.stderr and "NoSuch" in out.stderr
    out = run_cli("executor", "--uses", "executors:Echo", "--uses-with", "{not json", "--host", "127.0.0.1")
    assert out.returncode == 1 and "--uses-with is not valid JSON" in out.stderr
    out = run_cli("ping", "nohostport")
    assert out.returncode == 1 and "HOST:PORT" in out.stderr


def test_port_in_use_is_reported() -> None:
    port = free_port()
    first = subprocess.Popen(
        plait_cmd("executor", "--uses", "executors:Echo", "--port", str(port), "--host", "127.0.0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    try:
        assert run_cli("ping", f"127.0.0.1:{port}", "--attempts", "40", "--timeout", "0.5").returncode == 0
        second = run_cli("executor", "--uses", "executors:Echo", "--port", str(port), "--host", "127.0.0.1")
        assert second.returncode == 1 and f"cannot bind 127.0.0.1:{port}" in second.stderr
    finally:
        first.terminate()
        first.wait(15)


def test_sigterm_lets_in_flight_requests_finish_on_a_real_process() -> None:
    import threading

    port = free_port()
    proc = subprocess.Popen(
        plait_cmd("executor", "--uses", "executors:Echo", "--port", str(port), "--host", "127.0.0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    results: list[object] = []
    try:
        assert run_cli("ping", f"127.0.0.1:{port}", "--attempts", "40", "--timeout", "0.5").returncode == 0
        with Client("127.0.0.1", port) as client:

            def slow() -> None:
                try:
                    results.append(client.post("/sleep", Text(text="in flight"), {"seconds": 1.0}).text)
                except Exception as e:
                    results.append(e)

            worker = threading.Thread(target=slow)
            worker.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            worker.join(10)
        assert results == [["in flight"]]
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["executor", "--config", "{}"], ("executor", "{}", "INFO")),
        (["gateway", "--config={}", "--log-level", "DEBUG"], ("gateway", "{}", "DEBUG")),
        (["executor", "--uses", "m:C"], None),  # other flags: the full CLI
        (["executor", "--config", "{}", "--help"], None),
        (["executor"], None),
        (["flow", "--config", "{}"], None),
        ([], None),
    ],
)
def test_process_commands_take_the_short_path(argv: list[str], expected: object) -> None:
    """`plait executor|gateway --config X` skips the CLI framework; anything else goes to it."""
    from plait._entry import process_command

    assert process_command(argv) == expected


def test_short_path_reports_a_bad_config_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "plait", "executor", "--config", '{"port": "x"}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
