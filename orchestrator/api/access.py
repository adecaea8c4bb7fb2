"""Who may call what on the orchestrator (the roles are in `genedge.auth`).

- agents register and heartbeat;
- the gateway reports arrivals and reads the routing table and the fleet;
- operators read the fleet and ask what-ifs;
- `/healthz`, `/readyz`, `/metrics`, the API docs and the dashboard's page (`/ui/`, which
  holds no data: it calls the read APIs with the token it is given) are open.
Anything not listed needs the operator token, so a new route is closed until placed here.
"""

from __future__ import annotations

from genedge.auth import OPEN_PATHS, Role, Roles
from orchestrator.api.ui import UI_PATHS

AGENT: Roles = frozenset({Role.AGENT})
GATEWAY: Roles = frozenset({Role.GATEWAY})
READERS: Roles = frozenset({Role.OPERATOR, Role.GATEWAY})
OPERATOR: Roles = frozenset({Role.OPERATOR})


def policy(method: str, path: str) -> Roles | None:
    if path in OPEN_PATHS or (method in ("GET", "HEAD") and path in UI_PATHS):
        return None
    agent_call = path == "/v1/agents/register" or (
        path.startswith("/v1/agents/") and path.endswith("/heartbeat")
    )
    if method == "POST" and agent_call:
        return AGENT
    if method == "POST" and path == "/v1/arrivals":
        return GATEWAY
    if method in ("GET", "HEAD") and path.startswith("/v1/"):
        return READERS
    return OPERATOR
