"""A Python client for a grokforge node: its REST API and its WebSocket, on the standard library.

    from grokforge_client import Client

    client = Client("http://127.0.0.1:8080", token)
    job = client.start_phase("cognate", dataset="mod-mul:97", steps=2000, variants=3)
    for frame in client.watch(job["id"]):          # replay, then live; reconnects with `since`
        if frame["type"] == "training_progress":
            print(frame["data"]["step"], frame["data"]["loss"])
    winner = client.models(job_id=job["id"], winner=True)[0]
    export = client.export([winner["id"]])
    client.download(export["id"], "model.zip")

* `Client` — one method per route (`start_phase`, `jobs`, `job`, `cancel`, `events`, `models`,
  `export`, `download`, `health`, `nodes`, …) and `watch`, an iterator over a job's WebSocket
  frames.
* `GrokforgeError` — what every call raises on an error answer: the node's RFC 9457 problem
  (`status`, `detail`, `field`).
"""

from .client import TERMINAL_STATUSES, Client
from .errors import GrokforgeError

__all__ = ["Client", "GrokforgeError", "TERMINAL_STATUSES"]
__version__ = "0.1.0"
