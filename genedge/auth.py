"""Credentials on every surface: bearer tokens by role, checked before any route runs.

Roles (docs/deploy.md, "Credentials"):

- `agent`: the fleet's agent token. Agents present it to the orchestrator to register and
  heartbeat; every call *to* an agent (the orchestrator's level commands, the gateway's
  generation requests, an operator's curl) must carry it.
- `gateway`: the gateway's token at the orchestrator: it reports arrivals and reads the
  routing table.
- `operator`: a person or script reading the fleet and asking what-ifs.

A service holds the tokens of the roles it accepts (`Credentials`) and a `Policy` that says,
per method and path, which roles may call (None: open, for health, metrics and the API docs).
`BearerAuth` (pure ASGI, so it runs before any body is read) answers 401 without a known
token and 403 with a token of a role the route does not accept. A service with no token at
all runs *open* (tests, a laptop): every route is then served, and `warn_if_open` logs one
clear warning when such a service listens on a non-loopback address. Once any token is set,
a role whose token is unset is simply refused: setting some tokens never leaves the others
open by accident.

Tokens are compared with `hmac.compare_digest` against every configured token (the time
does not tell which role came close) and are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from genedge.contract import ErrorBody
from genedge.http_errors import error_response

MIN_TOKEN_CHARS = 16


class Role(StrEnum):
    AGENT = "agent"
    GATEWAY = "gateway"
    OPERATOR = "operator"


Roles = frozenset[Role]
Policy = Callable[[str, str], Roles | None]
"""`policy(method, path)`: the roles that may call, or None when the route is open."""

# Paths every service leaves open: probes, Prometheus and the API's own description.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"})


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe): what `genedge up` and the docs use."""
    return secrets.token_urlsafe(32)


def check_token_setting(value: str, name: str) -> str:
    """Validator for a token setting: empty (role disabled / service open) or long enough
    that it cannot be guessed."""
    value = value.strip()
    if value and len(value) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"{name} is {len(value)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def check_distinct(tokens: Mapping[str, str]) -> None:
    """Tokens of different roles must differ, or a leaked agent token would also read the
    fleet (or inject arrivals)."""
    seen: dict[str, str] = {}
    for name, tok in tokens.items():
        if not tok:
            continue
        if tok in seen:
            raise ValueError(f"{name} equals {seen[tok]}: each role needs its own token")
        seen[tok] = name


@dataclass(frozen=True)
class Credentials:
    """The tokens a service accepts, by role (roles without a token are absent)."""

    tokens: Mapping[Role, str]

    @classmethod
    def of(cls, **by_role: str) -> Credentials:
        return cls({Role(r): t for r, t in by_role.items() if t})

    @property
    def open(self) -> bool:
        return not self.tokens

    def role_of(self, presented: str) -> Role | None:
        """The role whose token this is, comparing against every token in constant time."""
        found: Role | None = None
        given = presented.encode()
        for role, token in self.tokens.items():
            if hmac.compare_digest(given, token.encode()):
                found = role
        return found


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """Pure ASGI middleware enforcing `policy` with `credentials` (see the module doc)."""

    def __init__(self, app: ASGIApp, credentials: Credentials, policy: Policy, service: str):
        self.app = app
        self.credentials = credentials
        self.policy = policy
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.credentials.open:
            await self.app(scope, receive, send)
            return
        allowed = self.policy(scope["method"], scope["path"])
        if allowed is None:
            await self.app(scope, receive, send)
            return
        token = bearer(scope.get("headers", []))
        role = self.credentials.role_of(token) if token is not None else None
        if role is None:
            what = "missing" if token is None else "unknown"
            names = " or ".join(sorted(allowed))
            body = ErrorBody(
                type="unauthorized",
                message=f"{what} credential: this {self.service} route needs the {names} "
                "token as `Authorization: Bearer <token>`",
            )
            headers = {"www-authenticate": 'Bearer realm="genedge"'}
            await error_response(401, body, headers)(scope, receive, send)
            return
        if role not in allowed:
            body = ErrorBody(
                type="forbidden",
                message=f"the {role} token may not call {scope['method']} {scope['path']} "
                f"(needs {' or '.join(sorted(allowed))})",
            )
            await error_response(403, body)(scope, receive, send)
            return
        scope.setdefault("state", {})["role"] = role.value
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_open(log: logging.Logger, service: str, host: str, open_what: list[str]) -> None:
    """One clear warning when a service serves something without credentials on an address
    other machines can reach."""
    if open_what and not is_loopback(host):
        log.warning(
            "%s listens on %s with no credentials for: %s. Anyone who reaches it can use "
            "them; set the tokens (docs/deploy.md, Credentials)",
            service,
            host,
            ", ".join(open_what),
        )


# ---------------------------------------------------------------------- a credentials folder
#
# For deployments that cannot pass secrets by environment alone (docker compose generates
# them once into a volume): one file per credential, read by each service's settings through
# `*_CREDENTIALS_DIR` for any token not given in its environment.

CREDENTIAL_FILES = ("agent_token", "gateway_token", "operator_token", "gateway_key")


def read_credential(folder: Path | None, name: str) -> str:
    """The credential `name` from `folder` ("" when there is no folder or no such file)."""
    if folder is None:
        return ""
    path = Path(folder) / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def ensure_credentials(folder: Path, given: Mapping[str, str]) -> dict[str, str]:
    """Make `folder` hold every credential: a value in `given` (by file name) wins, an
    existing file is kept (restarts keep their tokens), anything else is generated. Writes
    `gateway_key.sha256` (what the gateway is configured with) and `credentials.env`, all
    mode 0600. Returns the credentials by name."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name in CREDENTIAL_FILES:
        value = (given.get(name) or "").strip() or read_credential(folder, name) or new_token()
        check_token_setting(value, name)
        write_private(folder / name, value + "\n")
        out[name] = value
    check_distinct({n: out[n] for n in CREDENTIAL_FILES if n != "gateway_key"})
    digest = hashlib.sha256(out["gateway_key"].encode()).hexdigest()
    write_private(folder / "gateway_key.sha256", digest + "\n")
    write_private(folder / "credentials.env", credentials_env(out))
    return out


def credentials_env(creds: Mapping[str, str]) -> str:
    """`NAME=value` lines a user or a script sources to call the system."""
    return (
        f"GENEDGE_GATEWAY_KEY={creds['gateway_key']}\n"
        f"GENEDGE_AGENT_TOKEN={creds['agent_token']}\n"
        f"GENEDGE_OPERATOR_TOKEN={creds['operator_token']}\n"
        f"GENEDGE_GATEWAY_TOKEN={creds['gateway_token']}\n"
    )


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT: set it
