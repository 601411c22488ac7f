"""Storage node: signed uploads streamed to disk, originals and variants served over HTTP, heartbeats."""
