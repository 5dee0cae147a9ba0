"""Dependencies: settings, database sessions, the caller's identity."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import APIError
from seal_service.keys import lookup_key
from seal_service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    is_admin: bool


_bearer = HTTPBearer(auto_error=False, description="an API key from `seal keys create`")


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def current_principal(
    db: Annotated[Session, Depends(get_db, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key (Authorization: Bearer <key>)")
    row = lookup_key(db, credentials.credentials)
    if row is None:
        raise _unauthorized("invalid API key")
    return Principal(row.id, row.tenant_id, row.is_admin)


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise APIError(403, "this endpoint needs an admin key", code="admin_required")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Sessions close when the endpoint returns (not when a streamed response ends).
DbDep = Annotated[Session, Depends(get_db, scope="function")]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
