"""The one way Redline makes Docker clients: the engine's address (an explicit base URL, else
DOCKER_HOST, else the default socket), and the API version negotiated once per process and address,
not on every client (a `/version` round trip that the kill switch and each exec would otherwise pay)."""

from __future__ import annotations

import os
import threading

import docker
import docker.errors

from console.sandbox.errors import EngineUnavailable

DEFAULT_URL = "unix:///var/run/docker.sock"
_versions: dict[str, str] = {}
_lock = threading.Lock()


def engine_url(base_url: str | None = None) -> str:
    return base_url or os.environ.get("DOCKER_HOST") or DEFAULT_URL


def new_client(base_url: str | None = None, timeout: int = 60) -> docker.DockerClient:
    """A client of its own (close it when done); EngineUnavailable when the engine does not answer."""
    url = engine_url(base_url)
    try:
        with _lock:
            version = _versions.get(url)
            if version is None:
                probe = docker.APIClient(base_url=url, version="auto", timeout=timeout)
                version = _versions[url] = probe.api_version
                probe.close()
        return docker.DockerClient(base_url=url, version=version, timeout=timeout)
    except docker.errors.DockerException as exc:
        raise EngineUnavailable.of(exc, url) from None


def new_api(base_url: str | None = None, timeout: int = 60) -> docker.APIClient:
    return new_client(base_url, timeout).api
