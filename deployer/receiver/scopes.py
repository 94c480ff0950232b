"""What a verified operator key may do: its scope's table, and the apps it is limited to. Pure.

A fleet controller's key sits on every host of its fleet and on the controller: if one host is taken over,
its copy of the key must not make the holder operator everywhere. So keys have scopes:

| scope    | deploy a tag | promote, abort | GET /jobs, /apps | GET /audit, detailed /healthz |
| -------- | ------------ | -------------- | ---------------- | ----------------------------- |
| operator | yes          | yes            | yes              | yes                           |
| fleet    | yes          | no             | yes              | no                            |
| read     | no           | no             | yes              | yes                           |

A key with `apps` is limited to those apps: it acts on no other, sees no other's jobs (they answer as unknown,
so a key learns nothing of the apps it may not see), and reads no audit log, which spans every app.
"""

from __future__ import annotations

from enum import StrEnum

from deployer.config.model import OperatorKey


class Action(StrEnum):
    DEPLOY = "deploy"  # POST /deploy with or without a tag: a redeploy
    END_CANARY = "end-canary"  # POST /deploy with "action": promote or abort
    READ_APP = "read-app"  # GET /jobs/<id>, GET /apps/<app>
    READ_LOG = "read-log"  # GET /audit, a detailed GET /healthz


PERMITTED = {
    "operator": frozenset(Action),
    "fleet": frozenset({Action.DEPLOY, Action.READ_APP}),
    "read": frozenset({Action.READ_APP, Action.READ_LOG}),
}
SPANS_EVERY_APP = frozenset({Action.READ_LOG})


def refusal(key: OperatorKey, action: Action, app: str | None = None) -> str | None:
    """Why `key` may not do `action` (on `app`), or None when it may."""
    if action not in PERMITTED[key.scope]:
        return f"key {key.key_id!r} has scope {key.scope!r}, which does not allow {action}"
    if key.apps is not None and action in SPANS_EVERY_APP:
        return f"key {key.key_id!r} is limited to apps {', '.join(key.apps)}, and {action} spans every app"
    if key.apps is not None and app is not None and app not in key.apps:
        return f"key {key.key_id!r} is not allowed on app {app!r}"
    return None
