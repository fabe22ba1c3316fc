"""`offshelf serve` in a subprocess on a free loopback port, as a user starts it: for the load benchmark and the
service's live tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Starts `offshelf serve --store STORE --json ARGS...` and waits until /readyz answers 200.

    `url` ends with a slash; `announced` is the JSON line the command printed; `stop()` ends it (SIGTERM).
    """

    def __init__(self, store: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **(env or {})}
        command = [sys.executable, "-m", "offshelf.cli", "serve", "--store", str(store), "--port", str(self.port),
                   "--json", *args]
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.announced = self.process.stdout.readline()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"offshelf serve exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"offshelf serve was not ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system, from /proc; 0 where there is none)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
