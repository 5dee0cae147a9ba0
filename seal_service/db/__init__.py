"""The registry: SQLAlchemy 2 models, engine/session helpers, migrations."""
