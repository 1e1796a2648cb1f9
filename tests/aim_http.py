"""``aim up`` in a test: start it on a repo (own process group), query its HTTP API, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 10.0):
    """``(status, decoded JSON)`` of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read().decode())


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the process group led by ``proc`` (``start_new_session=True``)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def aim_up(repo: Path, log_path: Path, wait_for: str = "/projects/", timeout: float = 120) -> Iterator[str]:
    """Serve ``repo`` with ``aim up`` on a free loopback port; yields the API base URL.

    Waits until ``GET <base><wait_for>`` answers 200; the server's whole process group
    (``aim up`` starts uvicorn as a child) is killed on exit, whatever happens.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    aim_cli = Path(sys.executable).with_name("aim")
    env = {**os.environ, "AIM_UI_TELEMETRY_ENABLED": "0"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(aim_cli), "up", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--yes"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                pytest.fail(f"aim up exited with {server.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                status, _ = http("GET", base + wait_for, timeout=5)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"aim up did not answer within {timeout:g} s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop_process_group(server)
