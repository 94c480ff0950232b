"""The HTTP status of each error: the one place that maps them, for the JSON routes and the console's pages."""

from __future__ import annotations

from deployer.errors import (
    AuditError,
    DeployerError,
    Forbidden,
    InvalidRequest,
    InvalidTag,
    MalformedRequest,
    MisdirectedRequest,
    PayloadTooLarge,
    StateError,
    Unauthorized,
    UnknownApp,
    UnknownJob,
    UnknownPage,
    UnsupportedMediaType,
)

STATUS: list[tuple[type[DeployerError], int]] = [
    (MisdirectedRequest, 421),
    (Unauthorized, 401),
    (Forbidden, 403),
    (MalformedRequest, 400),
    (InvalidRequest, 422),
    (InvalidTag, 422),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (UnknownApp, 404),
    (UnknownJob, 404),
    (UnknownPage, 404),
    (StateError, 503),
    (AuditError, 503),  # the log could not be read; a bad filter is a MalformedRequest by then
    (DeployerError, 500),
]


def status_for(exc: DeployerError) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))
