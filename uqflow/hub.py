"""The Hugging Face hub as uqflow meets it: can it be reached, and what does the local cache hold.

Offline, ``huggingface_hub``, ``transformers`` and ``datasets`` retry every file of an uncached model
or dataset for a minute or more before they fail. uqflow asks once, up front: if the hub cannot be
reached (a 3-second connection attempt), it switches this process to the libraries' own offline
mode, so cached models and datasets load from the cache at once and uncached ones are reported in
seconds, each fact once.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
_TRUE = {"1", "true", "yes", "on"}


def offline_by_setting() -> bool:
    """Whether the user asked for offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


@functools.lru_cache(maxsize=1)
def reachable() -> bool:
    """Whether the hub answers a TCP connection within PROBE_SECONDS (asked once per process).
    False without asking when offline mode is set; on False the process goes offline."""
    if offline_by_setting():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=PROBE_SECONDS).close()
        return True
    except OSError as e:
        log.warning("the Hugging Face hub (%s) cannot be reached (%s); using the local cache only",
                    endpoint.hostname, e.strerror or type(e).__name__)
        go_offline()
        return False


def go_offline() -> None:
    """Put huggingface_hub, transformers and datasets in their offline mode for this process, in
    the environment (for modules not imported yet) and in the modules already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True


def cache_dir() -> Path:
    """Where the hub's files are cached (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def model_cached(repo_id: str) -> bool:
    """Whether the local hub cache holds the model's config.json (a model downloaded before)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir())
    return isinstance(found, str)


def looks_like_hub_id(source: str) -> bool:
    """``org/name``, as the hub spells repository ids."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source))


def is_hub_id(source: str) -> bool:
    """A hub repository id that is not also a local path."""
    return looks_like_hub_id(source) and not Path(source).expanduser().exists()
