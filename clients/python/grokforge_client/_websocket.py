"""A minimal RFC 6455 WebSocket client on the standard library: enough for a node's `/ws`.

Text frames only (the node speaks JSON), client frames masked as the RFC requires, pings
answered, fragmented messages reassembled. `recv` returns None once the peer closed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
from urllib.parse import urlsplit

from .errors import GrokforgeError

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class WebSocketClosed(Exception):
    """The connection is gone (closed by the peer or broken)."""

    def __init__(self, code: int | None = None, reason: str = ""):
        super().__init__(f"websocket closed ({code}: {reason})" if code else "websocket closed")
        self.code = code
        self.reason = reason


class WebSocket:
    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    def connect(cls, url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> "WebSocket":
        """Opens `url` (ws:// or wss://). A refused handshake raises GrokforgeError with the
        node's status and problem."""
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((host, port), timeout=timeout)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        ws = cls(sock)
        head = ws._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                response_headers[name.strip().lower()] = value.strip()
        if status != 101:
            length = int(response_headers.get("content-length", "0") or 0)
            body = ws._read_exact(length) if length else b""
            sock.close()
            raise GrokforgeError.from_response(status, body, f"websocket handshake refused: {status}")
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if response_headers.get("sec-websocket-accept") != expected:
            sock.close()
            raise GrokforgeError(0, None, "websocket handshake: wrong Sec-WebSocket-Accept")
        return ws

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode())

    def recv(self) -> str | None:
        """The next text message; None once the peer closed. Raises socket.timeout when the
        socket's timeout passes with nothing received."""
        message = b""
        message_op = None
        while True:
            fin, opcode, payload = self._read_frame()
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                    self.close_reason = payload[2:].decode(errors="replace")
                try:
                    self._send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                self._sock.close()
                return None
            if opcode in (OP_TEXT, OP_BINARY):
                message_op = opcode
                message = payload
            elif opcode == OP_CONTINUATION:
                message += payload
            if fin and message_op is not None:
                return message.decode()

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        except OSError:
            pass
        finally:
            self._sock.close()

    # -- framing ---------------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exact(2)
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        mask = self._read_exact(4) if second & 0x80 else None
        payload = self._read_exact(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return fin, opcode, payload

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise WebSocketClosed(self.close_code, self.close_reason)
        self._buffer += chunk

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        data, _, self._buffer = self._buffer.partition(marker)
        return data
