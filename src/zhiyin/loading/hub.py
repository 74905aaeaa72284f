"""Finding a checkpoint's files: a local folder, or a Hugging Face hub id downloaded and cached with
`huggingface_hub` (which honours HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE and the other usual variables)."""

from __future__ import annotations

import os
import re

from ..config import MusicgenConfig, config_from_dict
from ..files import read_json


class ModelNotFoundError(FileNotFoundError):
    """The checkpoint can't be had: no such folder, no such hub repo, or offline and not cached."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "org/name"


def _is_local(name_or_path: str) -> bool:
    """A path that exists, or anything that can't be a hub id, is taken as a local folder."""
    return os.path.exists(os.path.expanduser(name_or_path)) or not _HUB_ID.match(name_or_path)


def resolve_file(name_or_path: str | os.PathLike, filename: str, required: bool = True, **hub_kwargs) -> str | None:
    """Path of `filename` in a local checkpoint folder or hub repo; None if it is absent and not required.

    hub_kwargs go to `huggingface_hub.hf_hub_download` (revision, cache_dir, token, local_files_only).
    """
    name = os.fspath(name_or_path)
    if _is_local(name):
        folder = os.path.expanduser(name)
        if not os.path.isdir(folder):
            raise ModelNotFoundError(
                f"model folder '{name}' does not exist: pass a folder holding config.json, or a hub id such as "
                "facebook/musicgen-small"
            )
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise ModelNotFoundError(f"'{name}' has no {filename}: is it a MusicGen checkpoint folder?")
        return None
    return _hub_file(name, filename, required, **hub_kwargs)


def _hub_file(repo_id: str, filename: str, required: bool, **hub_kwargs) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if hub_kwargs.get("revision") is None and not hub_kwargs.get("local_files_only"):
        try:  # already cached: no network round trip (and no wait when offline)
            return hf_hub_download(repo_id, filename, **{**hub_kwargs, "local_files_only": True})
        except (LocalEntryNotFoundError, EntryNotFoundError):
            pass
    try:
        if not hub_kwargs.get("local_files_only") and not _hub_resolves():
            raise LocalEntryNotFoundError("the hub's host name does not resolve")  # fail now, not after retries
        return hf_hub_download(repo_id, filename, **hub_kwargs)
    except LocalEntryNotFoundError as e:
        # Offline (or the hub is unreachable) and the file is not in the cache. For an optional file of a repo
        # whose config is cached, "not cached" most likely means "the repo has no such file".
        if not required:
            return None
        raise ModelNotFoundError(
            f"cannot get '{repo_id}' (no local folder of that name): the Hugging Face hub is unreachable "
            "(offline or HF_HUB_OFFLINE=1) and "
            f"{filename} is not in the local cache. Download it once on a machine with internet "
            f"(`hf download {repo_id}`), or pass the path of a local checkpoint folder instead."
        ) from e
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' is gated on the hub: accept its terms and log in (`hf auth login`)"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"no model '{repo_id}' on the Hugging Face hub (nor a local folder of that name): check the name, "
            "e.g. facebook/musicgen-small"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"'{repo_id}' has no revision {hub_kwargs.get('revision')!r}") from e
    except EntryNotFoundError as e:
        if required:
            raise ModelNotFoundError(f"'{repo_id}' has no {filename}: is it a MusicGen checkpoint?") from e
        return None
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' is neither a local folder nor a valid hub id (like facebook/musicgen-small)"
        ) from e


def _hub_resolves() -> bool:
    """Whether the hub's host name resolves (False at once without a network, where huggingface_hub would retry
    for half a minute before giving up)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # huggingface_hub answers from the cache alone, at once
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def read_config(name_or_path: str | os.PathLike, **hub_kwargs) -> MusicgenConfig:
    """A checkpoint's config.json, as the config of its kind (MusicgenMelodyConfig for melody checkpoints)."""
    return config_from_dict(read_json(resolve_file(name_or_path, "config.json", **hub_kwargs)))
