"""Thin routes of the gateway (the catalogue, the routing table, health, metrics); the
generation endpoints are `generation.GenerationEndpoints`. Errors become HTTP through
`genedge.http_errors` (the handlers every service installs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cloud_gateway.errors import UnknownModel
from cloud_gateway.service import Gateway
from genedge.contract import (
    ErrorBody,
    ErrorResponse,
    Health,
    OpenAIModel,
    OpenAIModelList,
    RoutingTable,
)
from genedge.http_errors import error_response


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _admit(request: Request) -> None:
    client = request.client.host if request.client else "-"
    _gw(request).admit(request.headers.get("authorization"), client)


router = APIRouter()


@router.get("/v1/models", response_model=OpenAIModelList)
async def models(request: Request) -> OpenAIModelList:
    """The catalogue, with where each model would be served now (`served_by`, `level`)."""
    _admit(request)
    return _gw(request).models()


@router.get(
    "/v1/models/{model_id:path}",
    response_model=OpenAIModel,
    responses={404: {"model": ErrorResponse}},
)
async def model(request: Request, model_id: str) -> OpenAIModel:
    """One model of the catalogue (OpenAI's `GET /v1/models/{model}`); 404 when unknown."""
    _admit(request)
    for m in _gw(request).models().data:
        if m.id == model_id:
            return m
    raise UnknownModel(f"model {model_id!r} is not served here", model=model_id)


@router.get("/v1/routing", response_model=RoutingTable, responses={503: {"model": ErrorResponse}})
async def routing(request: Request, response: Response) -> Any:
    """The routing table in use, with its age in `x-routing-age-s`."""
    _admit(request)
    gw = _gw(request)
    table = gw.router.table
    if table is None:
        body = ErrorBody(type="no_table", message="no routing table yet")
        return error_response(503, body)
    response.headers["x-routing-age-s"] = f"{gw.table_age_s() or 0.0:.1f}"
    return table


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    gw = _gw(request)
    age = gw.table_age_s()
    poller = gw.poller
    if age is None:
        if gw.router.cloud is None:
            h = Health(status="starting", detail="no routing table yet and no cloud backend")
            return JSONResponse(h.model_dump(), status_code=503)
        h = Health(status="degraded", detail="no routing table: everything goes to the cloud")
    elif poller is not None and age > gw.settings.table_max_age_s:
        why = poller.last_error or "no fresh table"
        h = Health(status="degraded", detail=f"routing table {age:.0f} s old ({why})")
    else:
        h = Health(status="ok", detail=f"routing table {age:.1f} s old")
    return JSONResponse(h.model_dump())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    gw = _gw(request)
    age = gw.table_age_s()
    gw.metrics.table_age.set(-1 if age is None else age)
    gw.metrics.arrivals_pending.set(gw.arrivals.pending())
    for backend, n in gw.inflight.items():
        gw.metrics.inflight.labels(backend).set(n)
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")
