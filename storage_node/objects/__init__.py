"""An image's files on a node's disk, shared by the node and its replicator: the object store, ingest of a
byte stream, format sniffing, and the peer-fetch protocol between nodes."""
