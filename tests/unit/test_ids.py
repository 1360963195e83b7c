"""Ids: OpenAI's shape, strictly increasing within a process, `created` from the same reading."""

import time

from storegate.ids import COMPLETION_ID, IdMinter, id_floor, message_id, parse_message_id


def test_ids_have_openai_shape_and_sort_in_creation_order() -> None:
    minter = IdMinter()
    minted = [minter.mint() for _ in range(5000)]
    ids = [i for i, _ in minted]
    assert all(COMPLETION_ID.fullmatch(i) and len(i) == len("chatcmpl-") + 29 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs(minted[0][1] - time.time()) < 5


def test_created_bounds_compare_like_created() -> None:
    minter = IdMinter()
    completion_id, created = minter.mint()
    assert id_floor(created) <= completion_id < id_floor(created + 1)


def test_message_ids_belong_to_their_completion() -> None:
    cid, _ = IdMinter().mint()
    other, _ = IdMinter().mint()
    assert parse_message_id(message_id(cid, 12), cid) == 12
    assert parse_message_id(message_id(cid, 0), other) is None
    for bad in (f"{cid}-", f"{cid}-01", f"{cid}-x", "nope", f"{cid}-1-2"):
        assert parse_message_id(bad, cid) is None


def test_bounds_clamp_instead_of_wrapping() -> None:
    cid, _ = IdMinter().mint()
    assert id_floor(-5) < cid < id_floor(10**15) and id_floor(10**15) == id_floor(10**20)
