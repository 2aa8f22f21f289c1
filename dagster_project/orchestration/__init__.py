"""How Dagster runs Streamfit's code: the code server and warm run workers."""
