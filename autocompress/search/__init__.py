"""Running studies (Optuna) and reading their Pareto fronts."""

import importlib.util as _util

# SQLAlchemy 2.1 reads a bare postgresql:// URL with psycopg 3; the project ships psycopg2 (psycopg2-binary).
if _util.find_spec("psycopg") is None and _util.find_spec("psycopg2") is not None:
    from sqlalchemy.dialects import registry as _registry

    _registry.register("postgresql", "sqlalchemy.dialects.postgresql.psycopg2", "PGDialect_psycopg2")
