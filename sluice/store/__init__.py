"""The task store: the database is the source of truth (tables, repository, migrations)."""
