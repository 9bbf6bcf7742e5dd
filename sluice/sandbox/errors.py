"""The sandbox's own exception tree; each error knows the HTTP answer it becomes.

The sandbox stands for a third party, so it shares nothing with Sluice's errors::

    SandboxError
    └── ApiError                   an error answer: status, code, message, field
        ├── InvalidRequest         400 INVALID_REQUEST: not JSON, missing/ill-typed field
        ├── Unauthorized           401 UNAUTHORIZED: missing, unknown or expired token
        ├── NotFound               404 NOT_FOUND: unknown collection, object or parent
        └── ParentNotReady         409 PARENT_NOT_READY: parent still processing or rejected
"""

from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """Root of every error the sandbox raises on purpose."""


class ApiError(SandboxError):
    """An error that is answered to the client as ``{"error": {...}}``."""

    status_code = 500
    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidRequest(ApiError):
    """The request cannot be read: not JSON, or a required field is missing or ill-typed."""

    status_code = 400
    code = "INVALID_REQUEST"


class Unauthorized(ApiError):
    """The bearer token is missing, unknown or expired."""

    status_code = 401
    code = "UNAUTHORIZED"


class NotFound(ApiError):
    """The collection, the object or the named parent does not exist."""

    status_code = 404
    code = "NOT_FOUND"


class ParentNotReady(ApiError):
    """The parent exists but is not approved (still processing, or rejected)."""

    status_code = 409
    code = "PARENT_NOT_READY"
