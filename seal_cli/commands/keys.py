"""``seal keys revoke`` and ``seal keys list`` (``seal keys create`` is with the service commands)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from seal_cli.commands.service import _migrate, _settings
from seal_cli.errors import fail


def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_...), as `seal keys list` shows")]) -> None:
    """Revoke a key: every request with it is refused (401) from now on. Revoking twice is harmless."""
    from seal_service.db.session import session_scope
    from seal_service.keys import revoke_key

    settings = _settings()
    _migrate(settings)
    with session_scope(settings.resolved_database_url) as db:
        row = revoke_key(db, key_id)
        if row is None:
            fail(f"no key {key_id!r} (see `seal keys list`)")
        tenant, when = row.tenant_id, row.revoked_at
    typer.echo(f"revoked key {key_id} of tenant {tenant!r} (at {when:%Y-%m-%d %H:%M:%S} UTC)", err=True)


def keys_list(
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="only this tenant's keys")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
) -> None:
    """List keys: id, tenant, admin or not, name and first characters (never the key)."""
    from seal_service.db.session import session_scope
    from seal_service.keys import list_keys

    settings = _settings()
    _migrate(settings)
    with session_scope(settings.resolved_database_url) as db:
        rows = [(k.id, k.tenant_id, k.is_admin, k.prefix, k.name, k.revoked_at)
                for k in list_keys(db, tenant, include_revoked=revoked)]
    for key_id, t, admin, prefix, name, revoked_at in rows:
        state = f"revoked {revoked_at:%Y-%m-%d %H:%M:%S}" if revoked_at else "active"
        typer.echo(f"{key_id}\t{t}\t{'admin' if admin else 'tenant'}\t{prefix}...\t{state}\t{name or ''}")
