"""`LocalNode`: starts a real `grokforge serve` on port 0 for a test, and stops it.

    with LocalNode(data_dir=tmp_path) as node:
        client = node.client()

The binary is `binary`, else `$GROKFORGE_BIN`, else the CI build at
`${XDG_CACHE_HOME:-~/.cache}/grokforge/ci-target/debug/grokforge`. The node gets a clean
environment (no `GROKFORGE_*` from the caller) plus `env`; it prints `listening on URL`, and,
with no tokens configured, generates an admin token into `<data_dir>/admin-token` (mode 0600).
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time

from .client import Client

_LISTENING = re.compile(r"listening on (http://\S+)")


def default_binary() -> pathlib.Path:
    if os.environ.get("GROKFORGE_BIN"):
        return pathlib.Path(os.environ["GROKFORGE_BIN"])
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    return cache / "grokforge" / "ci-target" / "debug" / "grokforge"


class LocalNode:
    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        binary: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 120.0,
    ):
        self.binary = pathlib.Path(binary) if binary else default_binary()
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="grokforge-node-")
            data_dir = self._tmp.name
        self.data_dir = pathlib.Path(data_dir)
        self.env = env or {}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.token: str | None = None
        self.output: list[str] = []  # the node's stdout, line by line
        self.log_path = self.data_dir / "node-stderr.log"

    def __enter__(self) -> "LocalNode":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalNode":
        if not self.binary.is_file():
            raise FileNotFoundError(f"no grokforge binary at {self.binary} (set GROKFORGE_BIN)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GROKFORGE")}
        env.pop("LD_LIBRARY_PATH", None)
        env.update(self.env)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--bind", "127.0.0.1:0", "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, name="grokforge-node-stdout", daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while self.url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise TimeoutError(f"the node printed no address within {self.start_timeout} s; {self._tail()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait()
                raise RuntimeError(f"the node exited with {code} before listening; {self._tail()}")
            match = _LISTENING.search(line)
            if match:
                self.url = match.group(1)
        token_file = self.data_dir / "admin-token"
        if token_file.exists():
            mode = stat.S_IMODE(token_file.stat().st_mode)
            if mode & 0o077:
                raise AssertionError(f"{token_file} has mode {oct(mode)}, expected 0600")
            self.token = token_file.read_text().strip()
        return self

    def client(self, token: str | None = None) -> Client:
        return Client(self.url or "", token if token is not None else self.token)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _tail(self) -> str:
        try:
            stderr = self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            stderr = ""
        return f"stdout: {self.output[-20:]}; stderr: {stderr}"
