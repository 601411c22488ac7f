"""Replicator: a node's durable JetStream consumer and pending-row sweep that copy its set's images to it."""
