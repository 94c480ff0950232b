"""The project's own small error hierarchy.

Adapters translate library errors (docker.errors.*, sh.ErrorReturnCode) into these,
so the CLI and the web layer each turn them into messages and exit codes in one place.
"""

from __future__ import annotations

# The exit codes, the same for every command (sysexits.h where one fits). Each error class carries its own as
# `exit_code`; deployer/cli/main.py turns an error into its line and its code, and docs/commands.md lists them.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed (traffic stays where it was), or a check found a problem (status, verify, check)
EXIT_USAGE = 2  # a bad flag or argument, or an invalid config (argparse's own code for usage errors)
EXIT_REFUSED = 65  # EX_DATAERR: the server refused the request as sent (a signature, a scope, a field)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: Docker, the server or a registry does not answer
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: try again later: a lock is held, the server answered 429 or 503
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed: the operation did not happen (traffic stays where it was), or a check found a problem",
    EXIT_USAGE: "bad input: an unknown flag, a bad value, an invalid config",
    EXIT_REFUSED: "refused by the server: a signature, a key's scope or a field it does not take",
    EXIT_UNAVAILABLE: "unavailable: Docker, the server or a registry does not answer",
    EXIT_TEMPFAIL: "try again later: a lock is held (another deploy of the app), or the server answered 429 or 503",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class DeployerError(Exception):
    """Base of every error the deployer raises on purpose.

    `exit_code` is what the CLI exits with; `context` carries facts for the audit log
    (app, port set, tag ...). Neither ever holds a secret.
    """

    exit_code = EXIT_FAILED
    # A fault of the host that clears by itself (a daemon restarting, a registry down, a full disk): a job
    # that meets one waits and tries again instead of failing. Set by the adapter that maps the library error.
    transient = False
    fault: str | None = None  # what waits on it, when transient: "docker", "registry", "disk"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class ConfigError(DeployerError):
    """The config file is missing or invalid. Names the file, the app and the key."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: object = None, app: str | None = None, key: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if app is not None:
            where.append(f"app {app!r}")
        if key is not None:
            where.append(f"key {key!r}")
        full = f"{': '.join([', '.join(where), message]) if where else message}"
        super().__init__(full, path=str(path) if path is not None else None, app=app, key=key)


class InvalidTag(DeployerError):
    """A tag that is not a valid Docker tag, or does not match the app's tag pattern."""

    exit_code = EXIT_USAGE


class UnknownApp(DeployerError):
    exit_code = EXIT_USAGE


class LockError(DeployerError):
    """A lock is held by another process: the app's (another deploy of it), or a host-wide one past its wait."""

    exit_code = EXIT_TEMPFAIL


class UsageError(DeployerError):
    """Flags that do not go together, or a value a flag does not take: nothing was done."""

    exit_code = EXIT_USAGE


class DockerUnavailable(DeployerError):
    """The Docker daemon does not answer."""

    exit_code = EXIT_UNAVAILABLE
    transient = True
    fault = "docker"


class PullError(DeployerError):
    """The image could not be pulled: an unknown tag, bad credentials. Waiting will not help."""


class RegistryUnavailable(PullError):
    """The registry refused the connection, timed out or answered 5xx: it may be back in a minute."""

    exit_code = EXIT_UNAVAILABLE
    transient = True
    fault = "registry"


class BootError(DeployerError):
    """The new container could not start, or exited before it became healthy."""


class HealthCheckFailed(DeployerError):
    """The new instance did not pass its health gate before the deadline."""


class HookFailed(DeployerError):
    """A lifecycle hook exited non-zero or timed out."""


class RulesError(DeployerError):
    """iptables-restore refused a transaction, or the live rules could not be read."""


class ConntrackError(DeployerError):
    """The conntrack tool failed."""


class StateError(DeployerError):
    """The recorded state could not be read or written."""


class DiskFull(StateError):
    """The state folder's file system is full: nothing durable can be written until space returns."""

    transient = True
    fault = "disk"


class UnsafePath(StateError):
    """An entry in a folder another user can write is a link or not a plain file: root refuses to follow it."""


class MissingAccount(DeployerError):
    """The receiver's user or group does not exist on this host: `deployer setup` creates them."""


class NothingToRollBack(DeployerError):
    """The app has no previous release recorded."""

    exit_code = EXIT_USAGE


class AuditError(DeployerError):
    """The audit log cannot be read or written, or a filter given to it is invalid.

    A bad filter carries `field` in its context, so the web layer can answer 400 instead of 500.
    """


class RequestRejected(DeployerError):
    """An HTTP request the server refuses and does not act on; the web layer maps each kind to a status."""

    exit_code = EXIT_REFUSED


class Unauthorized(RequestRejected):
    """A missing or wrong signature, an unknown key, a stale timestamp or a reused nonce.

    The message says which check failed, never what value was expected.
    """


class MisdirectedRequest(RequestRejected):
    """The request names (in its Host) a server other than this one: refused before any credential is checked."""


class Forbidden(RequestRejected):
    """A verified key whose scope does not cover what it asked for."""


class MalformedRequest(RequestRejected):
    """The body is not the JSON (or form) its content type announces."""


class InvalidRequest(RequestRejected):
    """Well-formed, but a required field or header is missing or of the wrong type."""


class PayloadTooLarge(RequestRejected):
    """The body is over the configured cap; it was not read whole."""


class UnsupportedMediaType(RequestRejected):
    """A content type the endpoint does not take."""


class UnknownJob(RequestRejected):
    """No job has that id."""


class UnknownPage(RequestRejected):
    """A console page this host has nothing for: the fleet page off a controller, the cluster page off a cluster."""


class Redirected(RequestRejected):
    """The server answered with a redirect. A signed request is meant for one server: no redirect is followed."""


class UnexpectedAnswer(RequestRejected):
    """The server's answer is not one to act on: over the size cap, not a JSON object, or a field of the wrong form."""


class ServerUnavailable(DeployerError):
    """A server (a receiver, a fleet host) cannot be reached, or its answer broke off or came too late."""

    exit_code = EXIT_UNAVAILABLE


class ServerBusy(DeployerError):
    """The server answered 429 (too many requests) or 503 (not ready): the same request may pass later."""

    exit_code = EXIT_TEMPFAIL


class InvalidUrl(DeployerError):
    """A server URL that is not http(s)://host[:port][/prefix], or plain http to another host without consent."""

    exit_code = EXIT_USAGE


class AssetError(DeployerError):
    """A release asset could not be downloaded, was too large, or did not match its .sha256."""


class NotDeployable(DeployerError):
    """The app is host-bound: it runs on the host itself, so the deployer has nothing to deploy."""

    exit_code = EXIT_USAGE


class ModeError(DeployerError):
    """A maintenance, failover or drain change that cannot be made as asked (no responder, instance still failing)."""


class CanaryError(ModeError):
    """A canary that cannot start, change or end as asked (a bad weight, no canary running, a deploy during one)."""

    exit_code = EXIT_USAGE


class WatchdogDied(DeployerError):
    """A watch of the failover watchdog died of an unexpected error: the watchdog stops, to be started again."""


class ForwardingError(DeployerError):
    """Forwarding an app to another host, or routing its replies back, could not be set up or removed."""


class InvalidForwarding(ForwardingError):
    """A forward or forward-return argument that is not valid (an address, a port, a mark)."""

    exit_code = EXIT_USAGE


class PreflightFailed(ForwardingError):
    """The host is not ready for a forward, a forward-return or IPv6 forwarding; nothing was changed. Names each
    problem."""

    def __init__(self, message: str, problems: list[str], **context: object) -> None:
        super().__init__(message + "".join(f"\n  - {problem}" for problem in problems), **context)
        self.problems = problems


class ClusterError(DeployerError):
    """The cluster agent, keepalived or the shared address could not do what was asked (see docs/cluster.md)."""


class LeaveRefused(ClusterError):
    """Leaving now would leave buckets with no healthy host; --force overrides."""

    exit_code = EXIT_USAGE


class RolloutFailed(DeployerError):
    """A rollout across the fleet stopped: a host failed its deploy, refused it or did not answer in time.

    The message names each host and what happened to it (reverted, left on the tag, untouched)."""
