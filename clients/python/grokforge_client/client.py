"""`Client`: a grokforge node's REST API and its WebSocket, on the standard library.

Every method returns the node's JSON as plain dicts and lists (the shapes are in the node's
`GET /openapi.json`) and raises `GrokforgeError` on an error answer.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

from ._websocket import WebSocket, WebSocketClosed
from .errors import GrokforgeError

JSON = Any

#: Job states after which nothing more happens to a job.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
_CONTROL_FRAMES = frozenset({"connection_established", "subscription_confirmed", "unsubscribed", "pong"})


class Client:
    """A node at `url` (`http://127.0.0.1:8080`), called with bearer `token`.

    Without a token, `$GROKFORGE_TOKEN` is used, then `<data_dir>/admin-token` when `data_dir`
    is given.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        timeout: float = 30.0,
    ):
        self.url = url.rstrip("/")
        if token is None:
            token = os.environ.get("GROKFORGE_TOKEN")
        if token is None and data_dir is not None:
            token = (pathlib.Path(data_dir) / "admin-token").read_text().strip()
        self.token = token
        self.timeout = timeout

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: JSON = None, *, query: dict | None = None) -> tuple[int, dict, bytes]:
        """One call; returns (status, headers, body bytes) of a 2xx answer."""
        url = self.url + path
        if query:
            query = {k: _query_value(v) for k, v in query.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            raise GrokforgeError.from_response(error.code, error.read(), error.reason) from None
        except (urllib.error.URLError, OSError) as error:
            raise GrokforgeError(0, None, f"cannot reach {self.url}: {error}") from None

    def _json(self, method: str, path: str, body: JSON = None, **query: Any) -> JSON:
        _, _, data = self.request(method, path, body, query=query)
        return json.loads(data) if data else None

    # -- jobs ------------------------------------------------------------------------------

    def phases(self) -> list[dict]:
        """The eight phases in pipeline order, each with `has_recipe`."""
        return self._json("GET", "/phases")

    def start_phase(self, phase: str = "cognate", priority: int = 0, **settings: Any) -> dict:
        """Queues a job: `settings` are `grokforge train`'s flags as fields (`steps=200`,
        `dataset="mod-mul:97"`). Returns the new job record."""
        body = dict(settings)
        if priority:
            body["priority"] = priority
        return self._json("POST", f"/phases/{_quote(phase)}/start", body)

    def jobs(self, *, phase: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict]:
        """Job records, newest first."""
        return self._json("GET", "/jobs", phase=phase, status=status, limit=limit)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict:
        """Asks the job to stop at its next step (a queued job never starts)."""
        return self._json("POST", f"/jobs/{_quote(job_id)}/cancel")

    def events(self, job_id: str, since: int = 0, page: int = 1000) -> list[dict]:
        """The job's durable event log after sequence number `since`: envelopes with `seq`
        and `event` (`{"type": ..., "data": ...}`). The node answers a page of at most
        `page` events at a time; this reads pages until the log ends."""
        events: list[dict] = []
        while True:
            got = self._json("GET", f"/jobs/{_quote(job_id)}/events", since=since, limit=page)
            events.extend(got)
            if len(got) < page:
                return events
            since = got[-1]["seq"]

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Follows the job over the WebSocket until it ends; returns its final record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.watch(job_id, deadline=deadline):
            pass
        return self.job(job_id)

    # -- models ----------------------------------------------------------------------------

    def models(
        self,
        *,
        phase: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        winner: bool | None = None,
        job_id: str | None = None,
    ) -> list[dict]:
        """Registry records, oldest first. `job_id` filters here, on the answer."""
        models = self._json("GET", "/models", phase=phase, name=name, tag=tag, winner=winner)
        if job_id is not None:
            models = [m for m in models if m.get("job_id") == job_id]
        return models

    def model(self, model_id: str) -> dict:
        return self._json("GET", f"/models/{_quote(model_id)}")

    def export(self, model_ids: list[str] | str, format: str = "all", compression: bool = True) -> dict:
        """Packages models (`format`: all, primary or safetensors); returns the export record,
        whose `id` `download` takes."""
        if isinstance(model_ids, str):
            model_ids = [model_ids]
        body = {"model_ids": list(model_ids), "format": format, "compression": compression}
        return self._json("POST", "/models/export", body)

    def download(self, export_id: str, path: str | os.PathLike, *, timeout: float = 120.0) -> pathlib.Path:
        """Saves the export's package to `path` (a file, or a directory to put it in), waiting
        while the node still writes it. Returns the file written."""
        deadline = time.monotonic() + timeout
        wait = 0.25
        while True:
            try:
                _, headers, data = self.request("GET", f"/exports/{_quote(export_id)}")
                break
            except GrokforgeError as error:
                if error.status not in (404, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(wait)
            wait = min(wait * 2, 3.0)
        target = pathlib.Path(path)
        if target.is_dir():
            name = _filename(headers) or f"grokforge-export-{export_id}.zip"
            target = target / name
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target

    # -- node ------------------------------------------------------------------------------

    def health(self) -> dict:
        """The health report; also when the node is unhealthy (its 503 carries the report)."""
        try:
            return self._json("GET", "/health")
        except GrokforgeError as error:
            if error.status == 503 and "services" in error.problem:
                return error.problem
            raise

    def ready(self) -> bool:
        try:
            return bool(self._json("GET", "/ready").get("ready"))
        except GrokforgeError as error:
            if error.status == 503:
                return False
            raise

    def nodes(self) -> list[dict]:
        return self._json("GET", "/cluster/nodes")

    def openapi(self) -> dict:
        return self._json("GET", "/openapi.json")

    # -- WebSocket -------------------------------------------------------------------------

    def websocket(self) -> WebSocket:
        """A raw connection to `/ws`, authenticated; frames are JSON text."""
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = "?" + urllib.parse.urlencode({"token": self.token}) if self.token else ""
        return WebSocket.connect(f"{scheme}://{parts.netloc}/ws{query}", timeout=self.timeout)

    def watch(
        self,
        job_id: str,
        since: int = 0,
        *,
        until_done: bool = True,
        reconnect: bool = True,
        idle_timeout: float = 60.0,
        deadline: float | None = None,
    ) -> Iterator[dict]:
        """Yields the job's event frames (`{type, topic, seq, data, ...}`) after `since`: first
        those in its log, then live ones. A dropped connection is reopened with `since` = the
        last sequence number seen, so nothing is missed or repeated. With `until_done` it ends
        after the job completes, is cancelled, or fails for good.

        `deadline` is a `time.monotonic()` value; past it, TimeoutError."""
        topic = f"job:{job_id}"
        last = since
        backoff = 0.5
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in time")
            try:
                ws = self.websocket()
            except GrokforgeError as error:
                if not reconnect or error.status in (401, 403, 404):
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            try:
                ws.send_text(json.dumps({"type": "subscribe", "topic": topic, "since": last}))
                while True:
                    remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
                    ws.settimeout(idle_timeout if remaining is None else min(idle_timeout, remaining))
                    text = ws.recv()
                    if text is None:
                        break
                    backoff = 0.5
                    frame = json.loads(text)
                    kind = frame.get("type")
                    if kind == "subscription_confirmed" and frame.get("topic") == topic:
                        # The replay is done: a job that ended before `last` has nothing more.
                        if until_done:
                            record = self.job(job_id)
                            if record["status"] in TERMINAL_STATUSES and record["last_event_seq"] <= last:
                                return
                        continue
                    if kind == "error":
                        raise GrokforgeError(0, frame, f"websocket: {frame.get('message')}")
                    if kind in _CONTROL_FRAMES or frame.get("topic") != topic:
                        continue
                    seq = frame.get("seq")
                    if isinstance(seq, int):
                        if seq <= last:
                            continue
                        last = seq
                    yield frame
                    if until_done and kind in ("training_completed", "training_cancelled"):
                        return
                    if until_done and kind == "training_failed" and self.job(job_id)["status"] == "failed":
                        return
            except (OSError, WebSocketClosed, socket.timeout):
                if not reconnect:
                    raise
            finally:
                ws.close()
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def _quote(segment: str) -> str:
    return urllib.parse.quote(str(segment), safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _filename(headers: dict) -> str | None:
    for name, value in headers.items():
        if name.lower() == "content-disposition" and 'filename="' in value:
            name = value.split('filename="', 1)[1].split('"', 1)[0]
            return pathlib.Path(name).name or None
    return None
