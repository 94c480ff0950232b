"""The read-only web console: server-rendered pages of the apps, jobs and audit log, for signed-in viewers.

Off unless `[console]` is configured; `create_app` then registers it under /console/ (docs/console.md).
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from deployer.config import ConsoleConfig
from deployer.receiver.console import fleet as _fleet_pages  # noqa: F401  (its routes join the blueprint)
from deployer.receiver.console.auth import COOKIE_NAME, Gate
from deployer.receiver.console.pages import console

__all__ = ["register_console"]


def register_console(app: Flask, settings: ConsoleConfig) -> None:
    """The console's routes, and the session cookie they sign viewers in with."""
    receiver = app.extensions["deployer"]
    app.config.update(
        SECRET_KEY=settings.session_key,
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_SECURE=settings.secure_cookie,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.extensions["deployer.console"] = Gate(settings, receiver.journal, receiver.clock, receiver.queue.attempts)
    app.register_blueprint(console)
