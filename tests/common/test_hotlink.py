from __future__ import annotations

import pytest

from common.db.api_keys import App
from common.errors import Forbidden
from common.hotlink import check_referer, referer_allowed

SHOP = App("a1", "shop", ("shop.example", "cdn-friend.example"), True)
STRICT = App("a2", "strict", ("shop.example",), False)
OPEN = App("a3", "open", (), True)


@pytest.mark.parametrize(
    ("app", "referer", "ok"),
    [
        (SHOP, "https://shop.example/p/1", True),
        (SHOP, "https://www.shop.example/", True),
        (SHOP, "https://SHOP.example./x", True),
        (SHOP, "https://cdn-friend.example/", True),
        (SHOP, None, True),
        (SHOP, "", True),
        (SHOP, "https://evil.example/", False),
        (SHOP, "https://shop.example.evil.example/", False),
        (SHOP, "https://evilshop.example/", False),
        (SHOP, "not a url at all", False),
        (SHOP, "http://[::1/", False),
        (STRICT, None, False),
        (STRICT, "https://shop.example/", True),
        (OPEN, "https://anything.example/", True),
        (None, "https://anything.example/", True),
    ],
)
def test_referer_allowlist(app: App | None, referer: str | None, ok: bool) -> None:
    assert referer_allowed(app, referer) is ok
    if not ok:
        with pytest.raises(Forbidden) as info:
            check_referer(app, referer)
        assert info.value.code == "hotlink_forbidden"
