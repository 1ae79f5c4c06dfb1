"""Ingest scale-out: shard i of N takes the assets whose blake2b(asset id) mod N == i."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
import yaml

from services.ingest.config import IngestConfig
from services.ingest.router import Router
from services.ingest.shard import ANY_SHARD, Shard, shard_of
from shared.config import ConfigError, load_section
from shared.messages import MarketLifecycle, Message
from tests.ingest.frames import ASSET


def publish_into(out: list[tuple[str, Message]], topic: str, msg: Message) -> None:
    out.append((topic, msg))


def report_into(got: list[str], kind: str, market: str, assets: Sequence[str], wire: object) -> None:
    got.extend(assets)


MARKET = "0x" + "ab" * 32


def ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [str(rng.getrandbits(252)) for _ in range(n)]  # real token ids are ~77-digit decimals


def test_the_hash_is_pinned() -> None:
    # A changed formula would move assets between shards during a rolling deploy: pin it.
    # shard_of(a, n) == int.from_bytes(blake2b(a.encode(), digest_size=8).digest(), "big") % n
    assert [shard_of("1", n) for n in (2, 3, 4, 7)] == [0, 2, 2, 2]
    assert [shard_of("123", n) for n in (2, 3, 4, 7)] == [1, 2, 1, 1]
    assert [shard_of(ASSET, n) for n in (2, 3, 4, 7)] == [0, 2, 0, 1]
    assert shard_of("anything", 1) == 0


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_asset_in_exactly_one_shard_and_shares_even(count: int) -> None:
    assets = ids(20_000)
    shares = [Shard(i, count).mine(assets) for i in range(count)]
    assert sorted(a for share in shares for a in share) == sorted(assets)
    for share in shares:
        assert abs(len(share) - len(assets) / count) < 0.05 * len(assets) / count
        members = set(share)
        assert share == [a for a in assets if a in members]  # order kept


def test_owns_agrees_with_mine() -> None:
    assets = ids(500)
    for i in range(3):
        s = Shard(i, 3)
        assert [a for a in assets if s.owns(a)] == s.mine(assets)
    assert Shard().owns("x") and not Shard().enabled and Shard(1, 2).enabled


def test_bad_shards_rejected() -> None:
    for index, count in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError):
            Shard(index, count)


def test_force_subscribe_own_share_or_explicitly() -> None:
    assets = ids(100)
    s0, s1 = Shard(0, 2), Shard(1, 2)
    taken0, left0 = s0.forced(assets)
    taken1, left1 = s1.forced(assets, ANY_SHARD)
    assert sorted(taken0 + taken1) == sorted(assets) and not set(taken0) & set(taken1)
    assert left0 == len(taken1) and left1 == len(taken0)
    # naming a shard: that one takes everything, the others nothing
    assert s1.forced(assets, 1) == (assets, 0)
    assert s0.forced(assets, 1) == ([], 100)
    assert Shard().forced(assets) == (assets, 0)


def test_config_keys_validated_and_overridable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"ingest": {"shard_count": 3}}))
    _, cfg = load_section("ingest", IngestConfig, path, environ={"POOLWIRE_INGEST__SHARD_INDEX": "2"})
    assert (cfg.shard_index, cfg.shard_count) == (2, 3)
    with pytest.raises(ConfigError, match="shard_index"):
        load_section("ingest", IngestConfig, path, environ={"POOLWIRE_INGEST__SHARD_INDEX": "3"})
    with pytest.raises(ConfigError, match=r"ingest\.shard_count"):
        load_section("ingest", IngestConfig, path, environ={"POOLWIRE_INGEST__SHARD_COUNT": "0"})


def broadcast(kind: str, assets: list[str]) -> str:
    body = (
        '"assets_ids":[' + ",".join(f'"{a}"' for a in assets) + '],"market":"' + MARKET + '",'
        '"question":"q?","id":"1","timestamp":"1757908892351"'
    )
    if kind == "market_resolved":
        body += f',"winning_asset_id":"{assets[0]}","winning_outcome":"Yes"'
    return "{" + body + f',"event_type":"{kind}"' + "}"


@pytest.mark.parametrize("kind", ["new_market", "market_resolved"])
def test_broadcasts_published_and_reported_only_for_own_assets(kind: str) -> None:
    assets = ids(12, seed=3)
    seen: dict[int, list[str]] = {}
    reported: dict[int, list[str]] = {}
    for i in range(3):
        out: list[tuple[str, Message]] = []
        got: list[str] = []
        router = Router(
            partial(publish_into, out),
            owns=Shard(i, 3).owns,
            on_lifecycle=partial(report_into, got),
        )
        for _ in range(2):  # every connection receives the broadcast: still one message per asset
            router.handle_frame("c1", broadcast(kind, assets))
        seen[i] = [m.asset for _, m in out if isinstance(m, MarketLifecycle)]
        reported[i] = got
        assert reported[i] == seen[i] == Shard(i, 3).mine(assets)
    assert sorted(a for share in seen.values() for a in share) == sorted(assets)
    # unsharded: every asset, as before
    out2: list[tuple[str, Message]] = []
    Router(lambda t, m: out2.append((t, m))).handle_frame("c1", broadcast(kind, assets))
    assert [m.asset for _, m in out2 if isinstance(m, MarketLifecycle)] == assets
