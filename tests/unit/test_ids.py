"""Ids: OpenAI's shape, strictly increasing within a process, `created` from the same reading."""

import os
import re
import time
from collections import Counter

from storegate import ids as idmod
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


def test_fast_clock_digits_match_plain_base62() -> None:
    for value in (
        0,
        1,
        61,
        62,
        3843,
        3844,
        1_764_000_000_000_000,
        62**10 - 1,
        *range(10**15, 10**15 + 5000, 7),
    ):
        assert idmod._clock62(value) == idmod._base62(value, 10)


def test_random_digits_cover_the_alphabet_evenly() -> None:
    drawn = "".join(idmod._random62(19) for _ in range(20_000))
    assert len(drawn) == 380_000 and set(drawn) == set(idmod.ALPHABET)
    counts = Counter(drawn)
    # ~6,129 per digit, sd ~78. Mapping every byte (b % 62, no rejection) would make the first eight
    # digits 25% more likely: ~1,500 apart; a uniform draw stays within ~600 (beyond that: < 1e-9).
    assert max(counts.values()) - min(counts.values()) < 900


def test_request_ids_are_openai_shaped_and_never_repeat_across_refills() -> None:
    assert idmod.random_bytes(0) == b""
    seen = {idmod.request_id() for _ in range(5000)}  # 80,000 random bytes: many 4 KiB refills
    assert len(seen) == 5000
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", rid) for rid in seen)


def test_random_bytes_are_fresh_after_a_fork() -> None:
    """A forked child must not replay its parent's buffered bytes (they would give both the same ids)."""
    idmod._forget_random()
    idmod.random_bytes(1)  # the parent holds a full buffer: a child that kept it would draw the same
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it draws next, then leave at once, whatever happens
        try:
            os.write(write, idmod.random_bytes(16))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != idmod.random_bytes(16)
