"""Alembic migrations of the gateway's database, shipped inside the installed package.

:data:`common.db.MIGRATIONS_DIR` finds this folder through importlib.resources; ``versions/``
holds one module per revision, chained linearly.
"""
