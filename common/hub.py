"""The Hugging Face hub, checked once per process: with no connection, its libraries go offline (their local cache
only) instead of retrying each request for half a minute, and the caller's error names the offline way out."""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

OFFLINE_DATA = (
    "or train on the built-in --data synthetic (the offline demo: scripts/reproduce_table.sh --data synthetic)"
)


def reachable(url: str, timeout: float) -> bool:
    """A TCP connection to the url's host and port opens within `timeout` seconds."""
    parts = urlparse(url)
    try:
        with socket.create_connection(
            (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout
        ):
            return True
    except (OSError, ValueError):  # no route, refused, unknown host, timeout; ValueError: a malformed url
        return False


@functools.cache
def offline(timeout: float = 3.0) -> bool:
    """True if the hub cannot be reached (or HF_HUB_OFFLINE is set); then huggingface_hub, datasets and timm read
    only their local caches, as HF_HUB_OFFLINE=1 makes them (they read that variable at import, hence the constants)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")  # behind a proxy, only it is reachable
    if reachable(proxy or constants.ENDPOINT, timeout):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    return True
