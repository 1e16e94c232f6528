"""The error every call raises: the node's RFC 9457 problem, or why there was no answer."""

from __future__ import annotations

import json
from typing import Any


class GrokforgeError(Exception):
    """A call the node refused (`status` ≥ 400, `problem` its problem-details body) or could not
    be made (`status` 0). `field` names the offending start-body field of a 422."""

    def __init__(self, status: int, problem: dict[str, Any] | None, message: str):
        super().__init__(message)
        self.status = status
        self.problem = problem or {}

    @property
    def detail(self) -> str:
        return self.problem.get("detail") or str(self)

    @property
    def field(self) -> str | None:
        return self.problem.get("field")

    @classmethod
    def from_response(cls, status: int, body: bytes, fallback: str) -> "GrokforgeError":
        problem = None
        try:
            parsed = json.loads(body) if body else None
            if isinstance(parsed, dict):
                problem = parsed
        except ValueError:
            pass
        detail = (problem or {}).get("detail") or (problem or {}).get("title") or fallback
        return cls(status, problem, f"{status}: {detail}")
