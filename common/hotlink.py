"""Hotlink protection: an app may list the sites whose pages may embed its public images.

Pure: the app's allowlist and the request's Referer in, a Forbidden out. An empty allowlist allows
every site; a request without a Referer (direct visits, privacy-minded browsers) is allowed unless the
app turned that off.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from common.db.api_keys import App
from common.errors import Forbidden


def referer_allowed(app: App | None, referer: str | None) -> bool:
    if app is None or not app.referers:
        return True
    if not referer:
        return app.allow_empty_referer
    try:
        host = (urlsplit(referer).hostname or "").lower().rstrip(".")
    except ValueError:
        return False
    # An entry allows the host itself and its subdomains ("example.com" covers "www.example.com").
    return any(host == allowed or host.endswith("." + allowed) for allowed in (a.lower() for a in app.referers))


def check_referer(app: App | None, referer: str | None) -> None:
    if not referer_allowed(app, referer):
        raise Forbidden("this image may not be embedded from that site", code="hotlink_forbidden")
