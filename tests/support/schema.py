"""A comparable picture of a database schema (tables, columns, keys, indexes), for migration tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Everything that makes two schemas equal in effect, as plain sorted data."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [
                {"name": c["name"], "type": str(c["type"]), "nullable": bool(c["nullable"]),
                 "default": None if c.get("default") is None else str(c["default"])}
                for c in insp.get_columns(table)
            ],
            "primary_key": insp.get_pk_constraint(table).get("constrained_columns", []),
            "foreign_keys": sorted(
                [{"columns": fk["constrained_columns"], "references": fk["referred_table"],
                  "referred_columns": fk["referred_columns"], "ondelete": (fk.get("options") or {}).get("ondelete")}
                 for fk in insp.get_foreign_keys(table)], key=repr),
            "indexes": sorted(
                [{"name": ix["name"], "columns": ix["column_names"], "unique": bool(ix["unique"])}
                 for ix in insp.get_indexes(table)], key=repr),
            "unique": sorted(
                [{"name": u["name"], "columns": u["column_names"]} for u in insp.get_unique_constraints(table)],
                key=repr),
        }
    return out
