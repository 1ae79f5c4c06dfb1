"""One side reader for changes and trades; the skip counters exported on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.ingest import parse
from services.ingest.metrics import PUBLISH_LATENCY_BUCKETS, IngestCollector
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions
from shared.messages import BookChange, Message, Trade
from tests.ingest import frames


def test_sides_read_alike_whatever_their_case() -> None:
    assert {parse.side(s) for s in ("BUY", "Buy", "buy", "bUY")} == {"buy"}
    assert {parse.side(s) for s in ("SELL", "Sell", "sell")} == {"sell"}
    assert parse.side("") is None and parse.side("BID") is None


def test_a_number_is_a_finite_non_negative_decimal_or_none() -> None:
    assert [parse.number(v) for v in ("0", "0.52", 3, "1e308")] == [0.0, 0.52, 3.0, 1e308]
    assert [parse.number(v) for v in ("nan", "-nan", "inf", "-inf", "1e309", "-0.01", "x", "")] == [None] * 8


def test_a_change_and_a_trade_with_a_mixed_case_side_are_published() -> None:
    out: list[tuple[str, Message]] = []
    router = Router(lambda t, m: out.append((t, m)), verify_hashes=False)
    router.assign([frames.ASSET, frames.ASSET_NO], "c1")
    router.handle_frame("c1", frames.BOOK_DUMP)
    router.handle_frame("c1", frames.PRICE_CHANGE.replace('"side":"BUY"', '"side":"Buy"'))
    router.handle_frame("c1", frames.LAST_TRADE_PRICE.replace('"side":"BUY"', '"side":"Buy"'))
    changes = [m for _, m in out if isinstance(m, BookChange)]
    trades = [m for _, m in out if isinstance(m, Trade)]
    assert [c.side for c in changes] == ["buy", "sell"] and [t.side for t in trades] == ["buy"]
    assert router.stats.bad_values == 0


def scrape(router: Router) -> str:
    subscriptions = Subscriptions()
    pool = ConnectionPool(subscriptions, router, Limits(), lambda cid: None)  # type: ignore[arg-type,return-value]
    metrics = CollectorRegistry()
    metrics.register(IngestCollector(pool, router, subscriptions))
    return generate_latest(metrics).decode()


def test_events_for_assets_not_followed_and_legacy_frames_are_exported() -> None:
    router = Router(lambda t, m: None, verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    router.handle_frame("c1", frames.PRICE_CHANGE)  # its second entry's asset is not followed
    router.handle_frame("c1", frames.LAST_TRADE_PRICE.replace(frames.ASSET, "123"))
    router.handle_frame("c1", frames.PRICE_CHANGE_LEGACY)
    text = scrape(router)
    assert "poolwire_ingest_unknown_assets_total 2.0" in text
    assert "poolwire_ingest_legacy_events_total 1.0" in text


def test_publish_latency_is_exported_as_prometheus_clients_own_histogram_would() -> None:
    """The hot path's lock-free histogram scrapes exactly like prometheus_client's Histogram fed
    the same values (bounds inclusive: a value on a bound is in that bucket)."""
    router = Router(lambda t, m: None, verify_hashes=False)
    subscriptions = Subscriptions()
    pool = ConnectionPool(subscriptions, router, Limits(), lambda cid: None)  # type: ignore[arg-type,return-value]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    collector = IngestCollector(pool, router, subscriptions)
    ours.register(collector)
    name = "poolwire_ingest_publish_latency_seconds"
    reference = Histogram(name, "x", buckets=PUBLISH_LATENCY_BUCKETS, registry=theirs)
    for seconds in (0.0, 3e-6, 5e-6, 7e-6, 1e-5, 4e-5, 2.5e-4, 0.003, 0.025, 0.2, 1.5):
        collector.publish_latency.observe(seconds)
        reference.observe(seconds)

    def series(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if line.startswith(name) and "_created" not in line]

    assert series(ours) == series(theirs)
    assert f'{name}_bucket{{le="5e-06"}} 3.0' in series(ours)


def test_price_values_are_read_once_and_the_cache_stays_bounded() -> None:
    parse.PRICES.clear()
    assert parse.price_value("0.45") == 0.45 and parse.PRICES == {"0.45": 0.45}
    for bad in ("nan", "inf", "-0.1", "0", "x", ""):
        assert parse.price_value(bad) is None
    assert parse.best_or("nan", 0.3) == 0.3 and parse.change_values("inf", "1") is None
    assert list(parse.PRICES) == ["0.45"]  # nothing bad is kept
    for i in range(parse.PRICE_CACHE_MAX + 10):
        assert parse.price_value(f"0.{i:05d}1") == float(f"0.{i:05d}1")
    assert len(parse.PRICES) <= parse.PRICE_CACHE_MAX
