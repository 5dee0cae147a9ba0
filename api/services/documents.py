"""Stored documents: validated against the server's limits, private to their tenant."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from api.errors import field_error, not_found
from api.schemas import DocumentIn, DocumentOut, valid_id
from seal_service.db.base import new_id
from seal_service.db.models import Document
from seal_service.settings import Settings


def store_document(*, db: Session, tenant_id: str, doc: DocumentIn) -> Document:
    """Add a document row (stripped, with its hash). The caller commits."""
    row = Document(
        id=new_id("doc"), tenant_id=tenant_id, title=doc.title.strip(), text=doc.text.strip(),
        sha256=hashlib.sha256(doc.text.strip().encode()).hexdigest(),
    )
    db.add(row)
    return row


def document_out(d: Document) -> DocumentOut:
    return DocumentOut(id=d.id, title=d.title, text=d.text, created_at=d.created_at)


def create_document(*, db: Session, settings: Settings, tenant_id: str, doc: DocumentIn) -> Document:
    """Store ``doc`` for the tenant (422 if longer than the server allows) and commit."""
    if len(doc.text) > settings.max_document_chars:
        raise field_error(("text",), f"longer than {settings.max_document_chars} characters")
    row = store_document(db=db, tenant_id=tenant_id, doc=doc)
    db.commit()
    return row


def get_document(*, db: Session, tenant_id: str, doc_id: str) -> Document:
    """The tenant's document, else 404 (another tenant's id is just as unknown)."""
    row = db.get(Document, doc_id) if valid_id(doc_id) else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found("document", doc_id)
    return row
