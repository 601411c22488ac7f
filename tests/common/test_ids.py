from __future__ import annotations

import pytest

from common.errors import NotFound
from common.ids import check_image_id, is_image_id, new_image_id, shard


def test_new_ids_are_valid_and_distinct() -> None:
    ids = {new_image_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(is_image_id(i) for i in ids)


@pytest.mark.parametrize(
    "bad",
    ["", "../../etc/passwd", "a" * 21, "a" * 23, "A" * 22, "%2e%2e" + "a" * 16, "a" * 21 + "\x00", "a" * 21 + "1"],
)
def test_malformed_ids_are_unknown(bad: str) -> None:
    with pytest.raises(NotFound):
        check_image_id(bad)


def test_shard_is_stable_two_level_hex() -> None:
    aa, bb = shard("abcdefghijklmnopqrstuv")
    assert (aa, bb) == shard("abcdefghijklmnopqrstuv")
    assert len(aa) == len(bb) == 2 and int(aa + bb, 16) >= 0
