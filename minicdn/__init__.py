"""What users run and import: the `minicdn` CLI, the dev cluster, the embedded servers, the benchmarks,
the process runner and the HTTP client. The services (common, storage_node, replicator, query_service)
never import this package."""
