"""minicdn shared library: config, signing, database, bus, geo and embedded servers."""

__version__ = "0.1.0"
