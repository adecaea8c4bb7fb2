"""The agent as a model repository (issue 15): other agents fetch the models it holds.

- `GET /v1/repository`: the models offered (those whose files are on this host);
- `GET /v1/repository/{id}/manifest`: every file with its size and sha256;
- `GET /v1/repository/{id}/file?path=REL`: one file's bytes, with HTTP `Range` (206) so an
  interrupted transfer resumes.

The file path travels as a query parameter: model ids may contain `/` (`org/name` from a
Hugging Face cache), so a path after the id could not be told from the id. Only files the
manifest lists are served (no `..`, no hidden files). Behind the agent token like every
other agent route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from edge_agent.adapters.repository import RepositoryIndex, summary
from edge_agent.errors import UnknownModel
from edge_agent.runtime import AgentRuntime
from genedge.contract import ErrorResponse, ModelManifest, RepositoryList, RepositoryManifest

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def _rt(request: Request) -> AgentRuntime:
    rt: AgentRuntime = request.app.state.agent
    return rt


def _held(rt: AgentRuntime, model_id: str) -> ModelManifest:
    for m in rt.manager.held_manifests():
        if m.id == model_id:
            return m
    raise UnknownModel(f"this repository does not hold {model_id!r}", model=model_id)


@router.get("/v1/repository", response_model=RepositoryList)
async def repository(request: Request) -> RepositoryList:
    rt = _rt(request)
    return RepositoryList(data=[summary(m) for m in rt.manager.held_manifests()])


@router.get(
    "/v1/repository/{model_id:path}/manifest",
    responses=ERRORS,
    response_model=RepositoryManifest,
)
async def manifest(request: Request, model_id: str) -> RepositoryManifest:
    rt = _rt(request)
    return await rt.repository.manifest(_held(rt, model_id))


@router.get("/v1/repository/{model_id:path}/file", responses=ERRORS)
async def file(
    request: Request,
    model_id: str,
    path: str = Query(min_length=1, max_length=1024, description="Relative path of the file."),
) -> FileResponse:
    rt = _rt(request)
    found = RepositoryIndex.file_path(_held(rt, model_id), path)
    if found is None:
        raise UnknownModel(f"{model_id!r} has no file {path!r}", model=model_id)
    return FileResponse(found, media_type="application/octet-stream")
