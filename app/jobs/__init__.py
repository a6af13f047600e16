"""Training jobs: the shared job store (SQLite or PostgreSQL) and the publication protocol."""
