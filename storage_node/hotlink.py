"""Hotlink protection on the node: public images of an app with a Referer allowlist are served only to
pages on the listed sites (signed URLs, the owner's own grant, are exempt).

The allowlists of the (few) restricted apps are kept in memory and reloaded every ``refresh_s``; while
no app has an allowlist, a read costs nothing more. Otherwise the image's app is looked up once per
image (an indexed query, then cached), like the serve gate's status.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from common import loops
from common.db import api_keys as db_api_keys
from common.db.api_keys import App
from common.db.rows import Pool
from common.hotlink import check_referer

logger = logging.getLogger(__name__)


class HotlinkGuard:
    def __init__(self, pool: Pool, refresh_s: float = 10.0, max_images: int = 100_000) -> None:
        self.pool = pool
        self.refresh_s = refresh_s
        self.max_images = max_images
        self.restricted: dict[str, App] = {}
        self._image_app: OrderedDict[str, str | None] = OrderedDict()

    async def reload(self) -> None:
        self.restricted = {app.app_id: app for app in await db_api_keys.restricted_apps(self.pool)}

    async def run(self) -> None:
        while True:
            await loops.sleep(self.refresh_s)
            try:
                await self.reload()
            except Exception as exc:  # keep the last allowlists; try again next time
                loops.raise_if_cancelling()
                logger.warning("reloading hotlink allowlists failed: %s", exc)

    async def _app_of(self, image_id: str) -> str | None:
        if image_id in self._image_app:
            self._image_app.move_to_end(image_id)
            return self._image_app[image_id]
        app_id = await db_api_keys.app_of_image(self.pool, image_id)
        self._image_app[image_id] = app_id
        if len(self._image_app) > self.max_images:
            self._image_app.popitem(last=False)
        return app_id

    async def check(self, image_id: str, referer: str | None) -> None:
        """403 hotlink_forbidden when the image's app does not allow ``referer``."""
        if not self.restricted:
            return
        app_id = await self._app_of(image_id)
        if app_id is not None:
            check_referer(self.restricted.get(app_id), referer)
