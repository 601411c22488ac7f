"""The `minicdn` console script: one module per command group."""
