"""Stored documents, reusable by id in adaptation requests."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DbDep, PrincipalDep, SettingsDep
from api.schemas import DocumentIn, DocumentOut
from api.services import documents

router = APIRouter(prefix="/v1/documents", tags=["documents"])


@router.post("", status_code=201, response_model=DocumentOut, summary="Store a document")
def create_document(body: DocumentIn, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> DocumentOut:
    row = documents.create_document(db=db, settings=settings, tenant_id=who.tenant_id, doc=body)
    return documents.document_out(row)


@router.get("/{doc_id}", response_model=DocumentOut, summary="A stored document")
def get_document(doc_id: str, db: DbDep, who: PrincipalDep) -> DocumentOut:
    return documents.document_out(documents.get_document(db=db, tenant_id=who.tenant_id, doc_id=doc_id))
