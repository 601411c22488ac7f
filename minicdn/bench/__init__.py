"""`minicdn bench`: load a running cluster and print figures (uploads and lookups; `--pipeline` for variants)."""
