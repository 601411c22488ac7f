"""`minicdn bench`: load a running cluster and print figures (uploads and lookups; `--pipeline` for variants;
`--peers` beside SeaweedFS and nginx started here)."""
