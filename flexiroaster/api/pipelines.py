"""Pipelines: create, list, read, update (a new version), delete, validate, versions."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Depends, Query, Request, Response

from ..errors import SpecError
from ..runtime import Runtime
from ..spec import load_pipeline_text
from .deps import MAX_OFFSET, require_token, runtime
from .errors import InvalidBody, documented, encodable
from .models import PipelineIn, PipelineList, PipelineOut, ValidationOut, VersionList, VersionOut

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PipelineIn.model_json_schema()},
            "application/yaml": {
                "schema": {
                    "type": "object",
                    "description": "The pipeline document (`name`, `stages`, ...) as YAML text",
                }
            },
        },
    }
}


async def pipeline_text(request: Request) -> str:
    """The pipeline text of a request: a YAML body, `{"yaml": "..."}`, or the document as JSON.

    A body that carries no pipeline text at all is an InvalidBody (a bad request); what the
    text says is judged by the spec (a SpecError).
    """
    raw = await request.body()
    if not raw.strip():
        raise InvalidBody(
            "the request body is empty: send the pipeline as YAML (content-type"
            ' application/yaml), as {"yaml": "..."} or as a JSON document'
        )
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBody("the request body is not UTF-8 text") from None
    if ctype in YAML_TYPES:
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidBody(
            f"the request body is not valid JSON: {exc}; send YAML as application/yaml"
        ) from None
    if not isinstance(data, dict):
        raise InvalidBody(
            f'a JSON body must be an object (the pipeline, or {{"yaml": "..."}}), not {type(data).__name__}'
        )
    if data.get("yaml") is not None:
        if not isinstance(data["yaml"], str):
            raise InvalidBody("`yaml` must be the pipeline as a string")
        if len(data) > 1:
            others = ", ".join(sorted(k for k in data if k != "yaml"))
            raise InvalidBody(f"send either `yaml` or the pipeline's fields, not both ({others})")
        return data["yaml"]
    if _SURROGATE_ESCAPE.search(text):
        # PyYAML reads `\ud83d\ude00` as two lone surrogates where JSON means one character.
        return json.dumps(data, ensure_ascii=False, indent=2)
    return text  # JSON is YAML: line numbers in errors point into the body


@router.post(
    "",
    status_code=201,
    response_model=PipelineOut,
    responses=documented(401, 409, 413, 422),
    openapi_extra=BODY,
    dependencies=[Depends(require_token)],
)
async def create_pipeline(request: Request, rt: Runtime = Depends(runtime)) -> PipelineOut:
    """Create a pipeline (409 if one with that name exists: PUT makes a new version)."""
    return PipelineOut.of(rt.save_pipeline(await pipeline_text(request), "request body", new=True))


@router.get("", response_model=PipelineList, responses=documented(422))
def list_pipelines(
    rt: Runtime = Depends(runtime),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    skip: int | None = Query(
        None, ge=0, le=MAX_OFFSET, description="The original API's name for offset"
    ),
) -> PipelineList:
    records, total = rt.store.list_pipelines(
        limit=limit, offset=skip if skip is not None else offset
    )
    out = []
    for r in records:
        out.append(PipelineOut.of(rt.get_pipeline(r.id)))
    return PipelineList(pipelines=out, total=total)


@router.post(
    "/validate", response_model=ValidationOut, responses=documented(413, 422), openapi_extra=BODY
)
async def validate_pipeline(request: Request) -> ValidationOut:
    """Check a pipeline without saving it; problems come back as lines with field and line number."""
    text = await pipeline_text(request)
    try:
        p = load_pipeline_text(text, "request body")
    except SpecError as exc:
        return ValidationOut(
            valid=False, errors=[encodable(e) for e in exc.details or [exc.message]]
        )
    return ValidationOut(valid=True, errors=[], pipeline=p.name, stages=len(p.stages))


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=documented(404, 422))
def get_pipeline(pipeline_id: str, rt: Runtime = Depends(runtime)) -> PipelineOut:
    return PipelineOut.of(rt.get_pipeline(pipeline_id))


@router.put(
    "/{pipeline_id}",
    response_model=PipelineOut,
    responses=documented(401, 404, 409, 413, 422),
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


@router.delete(
    "/{pipeline_id}",
    status_code=204,
    responses=documented(401, 404, 409, 422),
    dependencies=[Depends(require_token)],
)
def delete_pipeline(pipeline_id: str, rt: Runtime = Depends(runtime)) -> Response:
    """Delete a pipeline and its versions (409 while it has active runs); its runs stay."""
    rt.store.get_pipeline(pipeline_id)
    rt.delete_pipeline(pipeline_id)
    return Response(status_code=204)


@router.get("/{pipeline_id}/versions", response_model=VersionList, responses=documented(404, 422))
def pipeline_versions(pipeline_id: str, rt: Runtime = Depends(runtime)) -> VersionList:
    versions = [
        VersionOut(version=v, yaml=y, created_at=c)
        for v, y, c in rt.store.pipeline_versions(pipeline_id)
    ]
    return VersionList(pipeline_id=pipeline_id, versions=versions)
