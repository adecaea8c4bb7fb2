"""Measured profiles on disk: `<profiles_dir>/<host fingerprint>/<model id>.json`.

A profile is reused only for the same host fingerprint, model id and file digest, so an
unchanged model on an unchanged host is not measured twice, and a changed file is.

A Hugging Face repo id has a slash (`org/name`); in the file name it is written `%2F`
(`org%2Fname.json`): one flat folder, no subfolder an id could climb out of, and no clash
with another id, as `%` is not a model-id character (a folder named `org--name` is a valid
id, so `--` would be ambiguous).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from genedge.contract import ModelProfile

log = logging.getLogger("edge_agent.profiles")


def profile_file_stem(model_id: str) -> str:
    """The file name (without `.json`) of a model's profile: the id, slashes as `%2F`."""
    if "%" in model_id or model_id.startswith(".") or "\\" in model_id or "\0" in model_id:
        raise ValueError(f"{model_id!r} is not a model id")
    return model_id.replace("/", "%2F")


class ProfileStore:
    def __init__(self, root: Path, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self.fingerprint = fingerprint

    def path(self, model_id: str) -> Path:
        return self.dir / f"{profile_file_stem(model_id)}.json"

    def get(self, model_id: str, file_digest: str) -> ModelProfile | None:
        p = self.path(model_id)
        try:
            profile = ModelProfile.model_validate_json(p.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("ignoring unreadable profile %s: %s", p, exc)
            return None
        if (
            profile.model_id != model_id
            or profile.file_digest != file_digest
            or profile.host_fingerprint != self.fingerprint
        ):
            return None
        return profile

    def put(self, profile: ModelProfile) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a profile."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(profile.model_id)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(profile.model_dump(mode="json"), f, indent=1)
        os.replace(tmp, p)
        return p
