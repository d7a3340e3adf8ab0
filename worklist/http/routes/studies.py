"""A study: its detail, the stored preview of each image and the heatmap of an
evaluated one (previews are made by the worker; the API never decodes pixel data)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from worklist.audit import Action
from worklist.heatmaps import LABEL, heatmap_path, load_heatmap, overlay_png
from worklist.http.deps import (
    AnyUser,
    PathStudy,
    Reader,
    SessionDep,
    SettingsDep,
    audited,
    study_detail,
)
from worklist.queries import latest_result
from worklist.tables import Instance, Study
from worklist.thumbnails import missing_thumbnail, thumbnail_path
from worklist.views import StudyDetail

router = APIRouter(tags=["worklist"])


@router.get("/api/studies/{study_uid}", response_model=StudyDetail)
def study(
    principal: AnyUser, found: PathStudy, db: SessionDep, settings: SettingsDep
) -> StudyDetail:
    """A study: images (evaluated with probability, or skipped with the reason), the
    latest result with its model, SR delivery state, reading state and feedback."""
    detail = study_detail(db, found, settings)
    audited(db, principal, Action.VIEW_STUDY, study=found)
    return detail


@router.get(
    "/api/studies/{study_uid}/images/{sop_uid}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def thumbnail(
    principal: Reader, found: PathStudy, sop_uid: str, db: SessionDep, settings: SettingsDep
) -> Response:
    """The PNG preview (at most 256 pixels) the worker stored for one image: 404 when
    there is none yet, 422 with the reason when the worker could not decode it."""
    instance_id = image_id(db, found, sop_uid)
    try:
        png = thumbnail_path(settings.data_dir, instance_id).read_bytes()
    except OSError:
        status, reason = missing_thumbnail(db, instance_id=instance_id)
        raise HTTPException(status_code=status, detail=reason) from None
    audited(db, principal, Action.VIEW_IMAGE, study=found, object_uid=sop_uid)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.get(
    "/api/studies/{study_uid}/images/{sop_uid}/heatmap",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no heatmap"}},
)
def heatmap(
    request: Request,
    principal: Reader,
    found: PathStudy,
    sop_uid: str,
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The thumbnail with the heatmap of the latest triage over it (abnormal studies
    only; "AI heatmap, not for diagnosis")."""
    instance_id = image_id(db, found, sop_uid)
    result = latest_result(db, study_id=found.id)
    grid = None
    if result is not None:
        uid = found.study_instance_uid
        grid = load_heatmap(heatmap_path(settings.data_dir, uid, result.revision, sop_uid))
    if grid is None:
        raise HTTPException(status_code=404, detail="no heatmap for this image")
    card, _problem = request.app.state.model_card.get()
    keep_aspect = bool(((card or {}).get("preprocessing") or {}).get("keep_aspect", False))
    try:
        preview = thumbnail_path(settings.data_dir, instance_id).read_bytes()
    except OSError:
        status, reason = missing_thumbnail(db, instance_id=instance_id)
        raise HTTPException(status_code=status, detail=reason) from None
    png = overlay_png(preview, grid, keep_aspect=keep_aspect)
    audited(
        db, principal, Action.VIEW_IMAGE, study=found, object_uid=sop_uid, detail={"heatmap": True}
    )
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "private, no-store", "X-Content-Label": LABEL},
    )


def image_id(db: Session, study: Study, sop_uid: str) -> int:
    """The database id of one image of the study (HTTP 404 when the study has none)."""
    instance_id = db.scalar(
        select(Instance.id).where(
            Instance.study_id == study.id, Instance.sop_instance_uid == sop_uid
        )
    )
    if instance_id is None:
        raise HTTPException(status_code=404, detail="no such image in this study")
    return instance_id
