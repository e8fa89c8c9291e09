"""Pipelines: create, list, read, update (a new version), delete, validate, versions."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request, Response

from ..errors import Conflict, SpecError
from ..runtime import Runtime
from ..spec import load_pipeline_text
from .deps import require_token, runtime
from .models import PipelineIn, PipelineList, PipelineOut, ValidationOut, VersionList, VersionOut

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PipelineIn.model_json_schema()},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def pipeline_text(request: Request) -> str:
    """The pipeline text of a request: a YAML body, `{"yaml": "..."}`, or the document as JSON."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("the request body is not UTF-8 text") from None
    if ctype in YAML_TYPES:
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"the request body is not valid JSON: {exc}; send YAML as application/yaml"
        ) from None
    if isinstance(data, dict) and set(data) == {"yaml"}:
        if not isinstance(data["yaml"], str):
            raise SpecError("`yaml` must be the pipeline as a string")
        return data["yaml"]
    return text  # JSON is YAML: line numbers in errors point into the body


@router.post(
    "",
    status_code=201,
    response_model=PipelineOut,
    openapi_extra=BODY,
    dependencies=[Depends(require_token)],
)
async def create_pipeline(request: Request, rt: Runtime = Depends(runtime)) -> PipelineOut:
    """Create a pipeline (409 if one with that name exists: PUT makes a new version)."""
    return PipelineOut.of(rt.save_pipeline(await pipeline_text(request), "request body", new=True))


@router.get("", response_model=PipelineList)
def list_pipelines(
    rt: Runtime = Depends(runtime),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    skip: int | None = Query(None, ge=0, description="The original API's name for offset"),
) -> PipelineList:
    records, total = rt.store.list_pipelines(
        limit=limit, offset=skip if skip is not None else offset
    )
    out = []
    for r in records:
        out.append(PipelineOut.of(rt.get_pipeline(r.id)))
    return PipelineList(pipelines=out, total=total)


@router.post("/validate", response_model=ValidationOut, openapi_extra=BODY)
async def validate_pipeline(request: Request) -> ValidationOut:
    """Check a pipeline without saving it; problems come back as lines with field and line number."""
    try:
        text = await pipeline_text(request)
        p = load_pipeline_text(text, "request body")
    except SpecError as exc:
        return ValidationOut(valid=False, errors=exc.details or [exc.message])
    return ValidationOut(valid=True, errors=[], pipeline=p.name, stages=len(p.stages))


@router.get("/{pipeline_id}", response_model=PipelineOut)
def get_pipeline(pipeline_id: str, rt: Runtime = Depends(runtime)) -> PipelineOut:
    return PipelineOut.of(rt.get_pipeline(pipeline_id))


@router.put(
    "/{pipeline_id}",
    response_model=PipelineOut,
    openapi_extra=BODY,
    dependencies=[Depends(require_token)],
)
async def update_pipeline(
    pipeline_id: str, request: Request, rt: Runtime = Depends(runtime)
) -> PipelineOut:
    """Save a new version; earlier versions stay readable under /versions."""
    rt.store.get_pipeline(pipeline_id)
    return PipelineOut.of(
        rt.save_pipeline(await pipeline_text(request), "request body", pipeline_id)
    )


@router.delete("/{pipeline_id}", status_code=204, dependencies=[Depends(require_token)])
def delete_pipeline(pipeline_id: str, rt: Runtime = Depends(runtime)) -> Response:
    """Delete a pipeline and its versions (409 while it has active runs); its runs stay."""
    rt.store.get_pipeline(pipeline_id)
    active = rt.active_runs(pipeline_id)
    if active:
        raise Conflict(
            f"pipeline {pipeline_id!r} has {len(active)} active run(s): {', '.join(active)}"
        )
    rt.store.delete_pipeline(pipeline_id)
    return Response(status_code=204)


@router.get("/{pipeline_id}/versions", response_model=VersionList)
def pipeline_versions(pipeline_id: str, rt: Runtime = Depends(runtime)) -> VersionList:
    versions = [
        VersionOut(version=v, yaml=y, created_at=c)
        for v, y, c in rt.store.pipeline_versions(pipeline_id)
    ]
    return VersionList(pipeline_id=pipeline_id, versions=versions)
