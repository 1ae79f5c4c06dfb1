"""Scale-out: ingest runs as N instances, shard ``i`` of ``N`` taking its share of the assets.

An asset belongs to shard ``blake2b(asset_id, 8 bytes) mod N``: a stable hash, so every shard, on
every host and after every restart, agrees on the split without talking to the others, and the
shares are even (about 1/N each) whatever the ids look like. Each shard applies the same rule to
everything that brings it assets: Gamma discovery, the static ``assets`` list, ``new_market`` and
``market_resolved`` broadcasts (every connection receives them for every market), and
``ForceSubscribe`` commands.

A ``ForceSubscribe`` is honoured for the assets of the shard's own share, so the same command can be
pushed to every shard and each subscribes its own part. It can also name a shard explicitly
(``shard: i``, see :meth:`Shard.forced`): that shard then takes every listed asset, for instance to
cover for a shard that is down, and the other shards ignore the command.

Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import blake2b

ANY_SHARD = -1  # a ForceSubscribe for every shard: each takes its own share


def shard_of(asset: str, count: int) -> int:
    """The shard (0 .. count - 1) that owns ``asset``."""
    if count <= 1:
        return 0
    digest = blake2b(asset.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard_count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard_index must be in 0..{self.count - 1}, got {self.index}")

    @property
    def enabled(self) -> bool:
        return self.count > 1

    def owns(self, asset: str) -> bool:
        return self.count <= 1 or shard_of(asset, self.count) == self.index

    def mine(self, assets: Iterable[str]) -> list[str]:
        """The assets of this shard's share, in their order."""
        if self.count <= 1:
            return list(assets)
        index, count = self.index, self.count
        return [a for a in assets if shard_of(a, count) == index]

    def forced(self, assets: Iterable[str], target: int = ANY_SHARD) -> tuple[list[str], int]:
        """What to do with a ForceSubscribe: (assets to subscribe here, how many were left to others).

        ``target`` is the shard the command names: ``ANY_SHARD`` (-1, the default) means each shard
        takes its own share; this shard's index means take them all; another index means none.
        """
        listed = list(assets)
        if target == ANY_SHARD:
            taken = self.mine(listed)
        elif target == self.index:
            taken = listed
        else:
            taken = []
        return taken, len(listed) - len(taken)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
