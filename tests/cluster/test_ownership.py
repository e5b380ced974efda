"""The ownership function as a pure function: balance, movement on a rescale, Discord shards."""

from __future__ import annotations

from collections import Counter

import pytest

from broker.cluster.ownership import DM_GUILD, discord_shard, owner, rendezvous_owner

KEYS = [f"slack:C{n:05d}/17000{n:05d}.000100" for n in range(10_000)]


def members(n: int) -> list[str]:
    return [f"agent-broker-{i}" for i in range(n)]


@pytest.mark.parametrize("size", [3, 7])
def test_ten_thousand_keys_spread_within_ten_percent_per_replica(size: int) -> None:
    shares = Counter(owner(key, members(size)) for key in KEYS)
    fair = len(KEYS) / size
    assert set(shares) == set(members(size))
    for member, count in shares.items():
        assert abs(count - fair) <= 0.10 * fair, (member, count, fair)


@pytest.mark.parametrize("size", [3, 7])
def test_a_member_added_takes_about_one_nth_of_the_keys_and_nothing_else_moves(size: int) -> None:
    before = {key: owner(key, members(size)) for key in KEYS}
    after = {key: owner(key, members(size + 1)) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    newcomer = f"agent-broker-{size}"
    assert {after[key] for key in moved} == {newcomer}
    expected = len(KEYS) / (size + 1)
    assert abs(len(moved) - expected) <= 0.10 * expected


def test_a_member_removed_gives_away_only_its_own_keys() -> None:
    before = {key: owner(key, members(4)) for key in KEYS}
    remaining = [m for m in members(4) if m != "agent-broker-1"]
    moved = [key for key in KEYS if owner(key, remaining) != before[key]]
    assert moved and all(before[key] == "agent-broker-1" for key in moved)


def test_the_order_of_the_member_list_does_not_change_a_hashed_owner() -> None:
    shuffled = ["agent-broker-2", "agent-broker-0", "agent-broker-1"]
    assert all(rendezvous_owner(k, shuffled) == owner(k, members(3)) for k in KEYS[:500])


def test_a_discord_thread_follows_its_guilds_shard_and_dms_are_on_shard_zero() -> None:
    guild = 81384788765712384  # Discord's docs' example guild
    shard = (guild >> 22) % 3
    assert discord_shard(guild, 3) == shard
    assert owner("discord:1234", members(3), guild_id=guild) == f"agent-broker-{shard}"
    assert owner("discord:5678", members(3), guild_id=DM_GUILD) == "agent-broker-0"
    # every thread of one guild has one owner, whatever its key hashes to
    keys = [f"discord:{n}" for n in range(200)]
    assert {owner(k, members(7), guild_id=guild) for k in keys} == {
        f"agent-broker-{discord_shard(guild, 7)}"
    }


def test_no_members_is_an_error_not_an_owner() -> None:
    with pytest.raises(ValueError):
        owner("slack:C1", [])
