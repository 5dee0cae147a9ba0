"""Stored documents, reusable by id in adaptation requests."""

from __future__ import annotations

from fastapi import APIRouter

from seal_service.db.models import Document
from api.deps import DbDep, PrincipalDep, SettingsDep
from api.errors import field_error, not_found
from api.services.jobs import store_document, valid_id
from api.schemas import DocumentIn, DocumentOut

router = APIRouter(prefix="/v1/documents", tags=["documents"])


def _out(d: Document) -> DocumentOut:
    return DocumentOut(id=d.id, title=d.title, text=d.text, created_at=d.created_at)


@router.post("", status_code=201, response_model=DocumentOut, summary="Store a document")
def create_document(body: DocumentIn, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> DocumentOut:
    if len(body.text) > settings.max_document_chars:
        raise field_error(("text",), f"longer than {settings.max_document_chars} characters")
    row = store_document(db, who.tenant_id, body)
    db.commit()
    return _out(row)


@router.get("/{doc_id}", response_model=DocumentOut, summary="A stored document")
def get_document(doc_id: str, db: DbDep, who: PrincipalDep) -> DocumentOut:
    row = db.get(Document, doc_id) if valid_id(doc_id) else None
    if row is None or row.tenant_id != who.tenant_id:
        raise not_found("document", doc_id)
    return _out(row)
