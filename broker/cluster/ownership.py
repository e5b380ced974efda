"""Which replica owns a thread: a pure function of the key and the member list.

Every replica computes the same answer with no coordination (docs/scaling.md):

* a Discord thread whose key carries its guild is owned by the member whose
  ordinal (its place in ``members``) is Discord's gateway shard of that guild,
  ``(guild_id >> 22) % len(members)``; a DM (guild 0) is on shard 0. Each
  replica runs the Discord connection of its own shard, so Discord delivers a
  guild's events to the owner of its threads;
* every other key goes to the member with the highest rendezvous hash of
  ``(member, key)`` (highest random weight): keys spread evenly, a member
  added takes about 1/N of the keys from the others, a member removed gives
  away only its own.

The hash is BLAKE2b, not Python's ``hash()``, so it is the same in every
process. Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DISCORD_SHARD_SHIFT = 22  # a snowflake's timestamp bits: Discord's shard formula
DM_GUILD = 0  # Discord: direct messages are on shard 0


def discord_shard(guild_id: int, shards: int) -> int:
    """Discord's gateway shard of ``guild_id`` among ``shards`` (>= 1)."""
    return (guild_id >> DISCORD_SHARD_SHIFT) % shards


def weight(member: str, key: str) -> int:
    """The rendezvous weight of ``member`` for ``key``: 64 bits of BLAKE2b."""
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_owner(key: str, members: Sequence[str]) -> str:
    """The member of ``members`` with the highest weight for ``key`` (ties: the
    first name in sorted order, so the order of ``members`` does not matter).
    Raises ValueError when ``members`` is empty."""
    if not members:
        raise ValueError("no members to own a thread")
    return max(sorted(members), key=lambda member: weight(member, key))


def owner(key: str, members: Sequence[str], *, guild_id: int | None = None) -> str:
    """The member that owns thread ``key``. ``guild_id`` is the Discord guild
    the key belongs to (:data:`DM_GUILD` for a direct message), None for a
    key that does not carry one: then rendezvous hashing decides.
    Raises ValueError when ``members`` is empty."""
    if not members:
        raise ValueError("no members to own a thread")
    if guild_id is not None:
        return members[discord_shard(guild_id, len(members))]
    return rendezvous_owner(key, members)
