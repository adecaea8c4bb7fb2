"""Orchestrator routes: agents, arrivals, profiles, placement. Errors mapped in one place."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from genedge.contract import (
    AgentList,
    AgentRegistration,
    ArrivalBatch,
    Controls,
    ErrorResponse,
    Explanation,
    Health,
    Heartbeat,
    HeartbeatAck,
    PinRequest,
    Placement,
    PlanRequest,
    PriorityRequest,
    RegistrationAck,
    RoutingTable,
)
from orchestrator.service import Orchestrator

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (401, 403, 404, 409, 413, 422, 503)
}


def _orch(request: Request) -> Orchestrator:
    o: Orchestrator = request.app.state.orchestrator
    return o


@router.post("/v1/agents/register", response_model=RegistrationAck, responses=ERRORS)
async def register(request: Request, body: AgentRegistration) -> RegistrationAck:
    o = _orch(request)
    o.register(body)
    ack = o.acknowledge(body.agent_id)
    return RegistrationAck(
        agent_id=body.agent_id,
        heartbeat_interval_s=o.settings.heartbeat_interval_s,
        server_time=o.clock(),
        pins=ack.pins,
        priorities=ack.priorities,
    )


@router.post("/v1/agents/{agent_id}/heartbeat", response_model=HeartbeatAck, responses=ERRORS)
async def heartbeat(request: Request, agent_id: str, body: Heartbeat) -> HeartbeatAck:
    o = _orch(request)
    return o.acknowledge(agent_id, o.heartbeat(agent_id, body))


@router.get("/v1/agents", response_model=AgentList)
async def agents(request: Request) -> AgentList:
    return AgentList(data=_orch(request).agents())


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """Every model on any registered agent, with where it is, its estimated rate and the
    half-life of the EWMA that gives it (`core/rates.py`)."""
    o = _orch(request)
    rates = o.rates.rates()
    out: dict[str, dict[str, Any]] = {}
    for a in o.agents():
        for m in a.models:
            e = out.setdefault(
                m.id,
                {
                    "id": m.id,
                    "kind": m.kind.value,
                    "rate_rps": rates.get(m.id, 0.0),
                    "rate_half_life_s": o.rates.half_life_of(m.id),
                    "hosts": {},
                },
            )
            e["hosts"][a.id] = {
                "level": m.level.value,
                "state": m.state.value,
                "agent_status": a.status,
            }
    return {"object": "list", "data": sorted(out.values(), key=lambda e: e["id"])}


@router.get("/v1/profiles")
async def profiles(request: Request) -> dict[str, Any]:
    rows = _orch(request).registry.profiles()
    return {"object": "list", "data": [{"agent": a, "model": m, "profile": p} for a, m, p in rows]}


@router.post("/v1/arrivals", status_code=202, responses=ERRORS)
async def arrivals(request: Request, body: ArrivalBatch) -> dict[str, Any]:
    res = _orch(request).arrivals(body)
    return {
        "accepted": sum(body.counts.values()),
        "counted": res.counted,
        "other": res.other,
        "duplicate": res.duplicate,
    }


@router.get("/v1/placement", response_model=Placement)
async def get_placement(request: Request) -> Placement:
    return _orch(request).placement()


@router.get("/v1/placement/history")
async def placement_history(request: Request) -> dict[str, Any]:
    """The last hour's decisions (when, trigger, cost by term, rates) and gateway contact."""
    return _orch(request).history()


@router.post("/v1/placement/plan", response_model=Placement, responses=ERRORS)
async def plan(request: Request, body: PlanRequest) -> Placement:
    """What-if: the decision for the given rates and/or algorithm, with no side effects."""
    return await _orch(request).what_if(body.rates, body.algorithm)


@router.get("/v1/placement/explain/{model_id:path}", response_model=Explanation, responses=ERRORS)
async def explain(request: Request, model_id: str) -> Explanation:
    return _orch(request).explain(model_id)


@router.get("/v1/controls", response_model=Controls)
async def controls(request: Request) -> Controls:
    """The operator's pins and priority classes in force (settings and API)."""
    return _orch(request).controls.view()


@router.put("/v1/pins/{host}/{model_id:path}", response_model=Controls, responses=ERRORS)
async def put_pin(request: Request, host: str, model_id: str, body: PinRequest) -> Controls:
    """Pin a model on an edge host at least at a level (operator); the next plan holds it."""
    return _orch(request).set_pin(host, model_id, body.level)


@router.delete("/v1/pins/{host}/{model_id:path}", response_model=Controls, responses=ERRORS)
async def delete_pin(request: Request, host: str, model_id: str) -> Controls:
    return _orch(request).remove_pin(host, model_id)


@router.put("/v1/priorities/{model_id:path}", response_model=Controls, responses=ERRORS)
async def put_priority(request: Request, model_id: str, body: PriorityRequest) -> Controls:
    """A model's priority class (operator): low, normal or high."""
    return _orch(request).set_priority(model_id, body.priority)


@router.delete("/v1/priorities/{model_id:path}", response_model=Controls, responses=ERRORS)
async def delete_priority(request: Request, model_id: str) -> Controls:
    return _orch(request).reset_priority(model_id)


@router.get("/v1/routing", response_model=RoutingTable)
async def routing(request: Request) -> RoutingTable:
    """The gateway's routing table: live hosts per model with their state and measured
    times, the decision's targets and the live cloud agents."""
    return _orch(request).routing_table()


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health)
async def readyz(request: Request) -> Health:
    o = _orch(request)
    up = sum(1 for a in o.registry.agents() if a.status == "up" and a.role == "edge")
    return Health(status="ok" if up else "degraded", detail=f"{up} live edge agent(s)")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
