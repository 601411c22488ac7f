"""Postgres access: pool lifecycle, migrations and the SQL of each table, one module per table."""
