"""The Docker daemon, through the Docker SDK."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import docker
import docker.errors
import requests.exceptions

from deployer.errors import BootError, DeployerError, DockerUnavailable, PullError, RegistryUnavailable
from deployer.plan.containers import ContainerInfo, Release

_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, FileNotFoundError)


def _info(container: Any) -> ContainerInfo:
    attrs = container.attrs
    state = attrs.get("State", {})
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    return ContainerInfo(
        id=container.id,
        name=container.name,
        status=state.get("Status", container.status),
        exit_code=state.get("ExitCode"),
        restart_count=attrs.get("RestartCount", 0),
        labels=dict(container.labels),
        addresses={name: net.get("IPAddress", "") for name, net in networks.items()},
        addresses6={name: _ipv6(net.get("GlobalIPv6Address", "")) for name, net in networks.items()},
    )


def _ipv6(address: str) -> str:
    """An IPv6 address as ip6tables and conntrack print it (compressed, lower case); "" for none."""
    try:
        return ipaddress.IPv6Address(address.split("/", 1)[0]).compressed if address else ""
    except ValueError:
        return ""


class DockerHost:
    """Talks to one daemon. The client connects lazily, so a dead daemon fails the call, not the import."""

    def __init__(self, base_url: str, *, timeout: int = 120) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout)
            except docker.errors.DockerException as exc:
                raise DockerUnavailable(
                    f"the Docker daemon at {self.base_url} does not answer: {_short(exc)}"
                ) from None
        return self._client

    def call(self, what: str, operation: Callable[[], Any]) -> Any:
        """Run one SDK operation; a daemon that does not answer becomes DockerUnavailable."""
        try:
            return operation()
        except _UNREACHABLE as exc:
            raise DockerUnavailable(
                f"the Docker daemon at {self.base_url} does not answer ({what}): {_short(exc)}"
            ) from None

    def ping(self) -> None:
        try:
            self.call("ping", lambda: self.client.ping())
        except docker.errors.APIError as exc:
            raise DockerUnavailable(f"the Docker daemon at {self.base_url} is unhealthy: {_short(exc)}") from None

    # --- images --------------------------------------------------------------------------------

    def pull(self, release: Release, auth: Mapping[str, str] | None = None) -> Release:
        """Pull the tag and return the release with the manifest digest the registry gave."""
        try:
            image = self.call(
                "pull",
                lambda: self.client.images.pull(
                    release.image, tag=release.tag, auth_config=dict(auth) if auth else None
                ),
            )
        except docker.errors.APIError as exc:
            raise pull_error(exc, release) from None
        return Release(tag=release.tag, image=release.image, digest=_repo_digest(image.attrs, release.image))

    def has_image(self, reference: str) -> bool:
        try:
            self.call("inspect image", lambda: self.client.images.get(reference))
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError:
            return False

    def tag_image(self, source: str, release: Release) -> None:
        """Give a locally present image (by digest) its tag again, so the container shows it."""
        try:
            self.call("tag image", lambda: self.client.images.get(source).tag(release.image, release.tag))
        except docker.errors.APIError as exc:
            raise PullError(f"image {source} is not available locally: {_short(exc)}") from None

    # --- networks ------------------------------------------------------------------------------

    def ensure_network(
        self, name: str, bridge: str, ipv6_subnet: str | None = None, *, ipv6_required: bool = True
    ) -> None:
        """A bridge network the deployer owns, with a known interface name for its netfilter rules; dual-stack
        with `ipv6_subnet` (Docker picks the IPv4 subnet as ever). An existing network is taken as it is when it
        fits, and refused with the way out when it does not: Docker cannot add IPv6 to a network in place. Without
        `ipv6_required` (IPv6 on by default, not asked for), an existing IPv4-only network is taken as it is: its
        instances have no IPv6 address, so no IPv6 rule leads to them (status says so)."""
        try:
            network = self.call("inspect network", lambda: self.client.networks.get(name))
        except docker.errors.NotFound:
            ipv6 = {}
            if ipv6_subnet is not None:
                ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=ipv6_subnet)])
                ipv6 = {"enable_ipv6": True, "ipam": ipam}
            try:
                self.call(
                    "create network",
                    lambda: self.client.networks.create(
                        name,
                        driver="bridge",
                        options={"com.docker.network.bridge.name": bridge},
                        labels={"deployer.network": "1"},
                        **ipv6,
                    ),
                )
                return
            except docker.errors.APIError as exc:
                # Another deployer process may have created it a moment ago: accept theirs if it fits.
                try:
                    network = self.call("inspect network", lambda: self.client.networks.get(name))
                except docker.errors.NotFound:
                    raise DeployerError(f"cannot create Docker network {name!r}: {_short(exc)}") from None
        except docker.errors.APIError as exc:
            raise DeployerError(f"cannot inspect Docker network {name!r}: {_short(exc)}") from None
        options = network.attrs.get("Options") or {}
        actual = options.get("com.docker.network.bridge.name")
        if actual != bridge:
            raise DeployerError(
                f"Docker network {name!r} exists with bridge {actual!r}, not {bridge!r}: "
                f"remove it or set [deployer] bridge to match"
            )
        if ipv6_subnet is not None and not network.attrs.get("EnableIPv6") and ipv6_required:
            raise DeployerError(
                f"Docker network {name!r} has no IPv6, and Docker cannot add it to a network in place: stop the "
                f"deployer's containers and remove it (docker network rm {name}) so the next deploy makes it "
                f"dual-stack, or set [deployer] ipv6 = false"
            )

    def addresses6(self, name: str) -> dict[str, str]:
        """IPv4 -> IPv6 address of each container on the network: the twins the IPv6 rules are made from."""
        try:
            network = self.call("inspect network", lambda: self.client.networks.get(name))
        except docker.errors.NotFound:
            return {}
        except docker.errors.APIError as exc:
            raise DeployerError(f"cannot inspect Docker network {name!r}: {_short(exc)}") from None
        twins = {}
        for attached in (network.attrs.get("Containers") or {}).values():
            ipv4 = (attached.get("IPv4Address") or "").split("/", 1)[0]
            ipv6 = _ipv6(attached.get("IPv6Address") or "")
            if ipv4 and ipv6:
                twins[ipv4] = ipv6
        return twins

    def remove_network(self, name: str) -> None:
        try:
            self.call("remove network", lambda: self.client.networks.get(name).remove())
        except docker.errors.NotFound:
            pass

    # --- containers ----------------------------------------------------------------------------

    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]:
        try:
            found = self.call("list containers", lambda: self.client.containers.list(all=True, filters=dict(filters)))
        except docker.errors.APIError as exc:
            raise DeployerError(f"cannot list containers: {_short(exc)}") from None
        infos = []
        for container in found:
            try:
                infos.append(_info(container))
            except docker.errors.NotFound:
                continue
        return infos

    def container_states(self, filters: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """id -> (state, status text such as "Up 5 minutes (healthy)") of the matching containers, in one request
        (no inspect per container, unlike `containers`)."""
        try:
            found = self.call("list containers", lambda: self.client.api.containers(all=True, filters=dict(filters)))
        except docker.errors.APIError as exc:
            raise DeployerError(f"cannot list containers: {_short(exc)}") from None
        return {c["Id"]: (str(c.get("State", "")), str(c.get("Status", ""))) for c in found}

    def inspect(self, container_id: str) -> ContainerInfo | None:
        try:
            return _info(self.call("inspect", lambda: self.client.containers.get(container_id)))
        except docker.errors.NotFound:
            return None

    def run(self, reference: str, arguments: Mapping[str, Any]) -> ContainerInfo:
        create = {k: v for k, v in arguments.items() if k != "detach"}
        try:
            container = self.call("create", lambda: self.client.containers.create(reference, **create))
        except docker.errors.ImageNotFound as exc:
            raise PullError(f"image {reference} is not present: {_short(exc)}") from None
        except docker.errors.APIError as exc:
            raise BootError(f"cannot create {arguments.get('name')}: {_short(exc)}") from None
        try:
            self.call("start", container.start)
            self.call("inspect", container.reload)
        except docker.errors.APIError as exc:
            # Created but never started (a published port is taken ...): it must not stay behind.
            self.remove(container.id)
            raise BootError(f"cannot start {arguments.get('name')}: {_short(exc)}") from None
        return _info(container)

    def set_restart_policy(self, container_id: str, policy: Mapping[str, Any]) -> None:
        try:
            self.call("update", lambda: self.client.containers.get(container_id).update(restart_policy=dict(policy)))
        except docker.errors.APIError as exc:
            raise BootError(f"cannot set the restart policy of {container_id[:12]}: {_short(exc)}") from None

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            logs = self.call(
                "logs", lambda: self.client.containers.get(container_id).logs(tail=lines, stdout=True, stderr=True)
            )
            return logs.decode("utf-8", "replace").strip()
        except (docker.errors.APIError, DockerUnavailable):
            return ""

    def stop(self, container_id: str, timeout: int) -> None:
        """SIGTERM, wait `timeout` seconds, then SIGKILL (docker stop)."""
        try:
            self.call("stop", lambda: self.client.containers.get(container_id).stop(timeout=timeout))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise DeployerError(f"cannot stop container {container_id[:12]}: {_short(exc)}") from None

    def remove(self, container_id: str) -> None:
        try:
            self.call("remove", lambda: self.client.containers.get(container_id).remove(force=True))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise DeployerError(f"cannot remove container {container_id[:12]}: {_short(exc)}") from None


# What the daemon says when the registry itself answered no: waiting will not change it.
_REFUSED = ("manifest unknown", "not found", "unauthorized", "denied", "invalid reference")


def pull_error(exc: docker.errors.APIError, release: Release) -> PullError:
    """A registry that could not be reached (the daemon answers 5xx: refused, timed out, 502/503) may come back;
    an unknown tag or refused credentials will not."""
    reason = _short(exc)
    status = exc.status_code or 500
    permanent = (
        isinstance(exc, docker.errors.NotFound) or status < 500 or any(marker in reason.lower() for marker in _REFUSED)
    )
    kind = PullError if permanent else RegistryUnavailable
    return kind(f"cannot pull {release.reference}: {reason}", tag=release.tag)


def _repo_digest(attrs: Mapping[str, Any], repository: str) -> str | None:
    for entry in attrs.get("RepoDigests") or []:
        name, _, digest = entry.partition("@")
        if name == repository:
            return digest
    return None


def _short(exc: BaseException) -> str:
    """A one-line reason from a docker or requests error, without the request URL noise."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = exc.explanation
        text = text.decode() if isinstance(text, bytes) else str(text)
    else:
        text = str(exc)
    return " ".join(text.split())[:400]
