"""Hotlink protection on the node: public images of an app with a Referer allowlist are served only to
pages on the listed sites (signed URLs, the owner's own grant, are exempt).

The allowlists of the (few) restricted apps are kept in memory and reloaded every ``refresh_s``; while
no app has an allowlist, a read costs nothing more. Otherwise the image's app is looked up once per
image (an indexed query, then cached), like the serve gate's status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

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
        # Called when an app gains an allowlist: its images may be linked in the published tree (``Store.published``).
        self.on_newly_restricted: Callable[[], None] | None = None

    async def reload(self) -> None:
        restricted = {app.app_id: app for app in await db_api_keys.restricted_apps(self.pool)}
        newly = restricted.keys() - self.restricted.keys()
        if newly and self.on_newly_restricted is not None:
            # Before the allowlist applies here (nginx stops no later than the node), and once more after: a link
            # made meanwhile goes too (one made after that is undone by its maker: ``known_unrestricted``).
            await asyncio.to_thread(self.on_newly_restricted)
            self.restricted = restricted
            await asyncio.to_thread(self.on_newly_restricted)
        self.restricted = restricted

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

    async def unrestricted(self, image_id: str) -> bool:
        """Whether anyone may be sent the image whatever their Referer (its app has no allowlist)."""
        if not self.restricted:
            return True
        return await self._app_of(image_id) not in self.restricted

    def known_unrestricted(self, image_id: str) -> bool:
        """Memory only: ``unrestricted``'s answer when it is known without asking Postgres (False when not)."""
        if not self.restricted:
            return True
        return image_id in self._image_app and self._image_app[image_id] not in self.restricted

    async def check(self, image_id: str, referer: str | None) -> None:
        """403 hotlink_forbidden when the image's app does not allow ``referer``."""
        if not self.restricted:
            return
        app_id = await self._app_of(image_id)
        if app_id is not None:
            check_referer(self.restricted.get(app_id), referer)
