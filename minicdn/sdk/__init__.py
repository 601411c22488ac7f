"""The Python SDK: `AsyncClient` (aiohttp) and `Client` (the same, driven from a private event loop in a
thread), the typed `Image`, and the errors. Import it as `from minicdn import Client, AsyncClient`; this
package stays import-free so `import minicdn` costs nothing until a client is asked for."""
