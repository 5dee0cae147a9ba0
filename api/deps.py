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
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from its API key; charged one request of its tenant's rate limit.

    The key is looked up in a session of its own, closed at once: a request that then
    generates for seconds (or streams for minutes) holds no database connection meanwhile.
    """
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key (Authorization: Bearer <key>)")
    with request.app.state.sessionmaker() as db:
        row = lookup_key(db, credentials.credentials)
        principal = Principal(row.id, row.tenant_id, row.is_admin) if row is not None else None
    if principal is None:
        raise _unauthorized("invalid API key")
    request.app.state.limits.charge_request(principal.tenant_id)
    return principal


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise APIError(403, "this endpoint needs an admin key", code="admin_required")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
# Sessions close when the endpoint returns (not when a streamed response ends).
DbDep = Annotated[Session, Depends(get_db, scope="function")]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
