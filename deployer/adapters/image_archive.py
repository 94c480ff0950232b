"""Load an image archive (`docker save` output) through the Docker SDK, and deploy it without a pull."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker.errors

from deployer.adapters.docker_host import DockerHost
from deployer.errors import AssetError, DeployerError
from deployer.plan.containers import Release


def load_image(host: DockerHost, path: Path, image: str, tag: str) -> str:
    """Load the archive and tag its one image `image:tag`; return that reference."""
    try:
        with open(path, "rb") as archive:
            images = host.call("load image", lambda: host.client.images.load(archive))
        if len(images) != 1:
            raise AssetError(f"the archive loaded {len(images)} images; expected exactly one")
        host.call("tag image", lambda: images[0].tag(image, tag))
    except docker.errors.APIError as exc:
        raise DeployerError(f"Docker could not load the image archive: {_reason(exc)}") from None
    except OSError as exc:
        raise AssetError(f"cannot read the image archive {path}: {exc.strerror}") from None
    return f"{image}:{tag}"


def _reason(exc: docker.errors.APIError) -> str:
    text = exc.explanation or str(exc)
    text = text.decode() if isinstance(text, bytes) else str(text)
    return " ".join(text.split())[:400]


class PreloadedImage:
    """A Docker port whose pull of one reference uses the image already loaded from the asset.

    Everything else goes to the real adapter; the engine does not know the difference.
    """

    def __init__(self, docker: Any, reference: str) -> None:
        self._docker = docker
        self.reference = reference

    def pull(self, release: Release, auth: Mapping[str, str] | None = None) -> Release:
        if release.reference == self.reference and self._docker.has_image(self.reference):
            return Release(tag=release.tag, image=release.image, digest=None)
        return self._docker.pull(release, auth)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._docker, name)
