"""Start `mailblast serve` as a real process on a free loopback port, for HTTP tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(
    store: Path | str,
    env: Mapping[str, str] | None = None,
    *extra: str,
    output: list[str] | None = None,
) -> Iterator[str]:
    """Run `mailblast serve` on the store until the block ends; yield its base URL.

    When ``output`` is given, the server's combined output is appended to it once it stops.
    """
    port = free_port()
    command = [sys.executable, "-m", "mailblast.cli.main", "serve", "--store", str(store)]
    command += ["--port", str(port), *extra]
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        printed = process.communicate(timeout=10)[0]
        if output is not None:
            output.append(printed.decode(errors="replace"))


def _wait_until_up(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.communicate()[0].decode(errors="replace")
            raise RuntimeError(f"mailblast serve exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"mailblast serve did not answer on {base} within 15 s")
