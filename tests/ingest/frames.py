"""Verbatim frame shapes of the Polymarket CLOB market channel (field sets and order as sent)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.ingest.router import Router
    from services.simulator.market import MarketSim

ASSET = "65818619657568813474341868652308942079804919287380422192892211131408793125422"
ASSET_NO = "52114319501245915516055106046884209969926127482827954674443846427813813222426"
MARKET = "0xbd31dc8a20211944f6b70f31557f1001557b59905b7738480ca09bd4532f84af"

BOOK_DUMP = (
    '[{"market":"' + MARKET + '","asset_id":"' + ASSET + '","timestamp":"1757908892351",'
    '"hash":"0x0000000000000000000000000000000000000000","bids":[{"price":"0.01","size":"1000"},'
    '{"price":"0.47","size":"300"},{"price":"0.48","size":"30"}],"asks":[{"price":"0.99","size":"500"},'
    '{"price":"0.53","size":"60"},{"price":"0.52","size":"25"}],"event_type":"book",'
    '"last_trade_price":"0.500","tick_size":"0.01"}]'
)

PRICE_CHANGE = (
    '{"market":"' + MARKET + '","price_changes":[{"asset_id":"' + ASSET + '","price":"0.49","size":"200",'
    '"side":"BUY","hash":"56621a121a47ed9333273e21c83b660cff37ae50","best_bid":"0.49","best_ask":"0.52"},'
    '{"asset_id":"' + ASSET_NO + '","price":"0.51","size":"200","side":"SELL",'
    '"hash":"1895759e4df7a796bf4f1c5a5950b748306923e2","best_bid":"0.48","best_ask":"0.51"}],'
    '"timestamp":"1757908892351","event_type":"price_change"}'
)

PRICE_CHANGE_LEGACY = (
    '{"asset_id":"' + ASSET + '","changes":[{"price":"0.4","side":"SELL","size":"3300"},'
    '{"price":"0.5","side":"SELL","size":"3400"}],"event_type":"price_change",'
    '"hash":"3cd4d61e042c81560c9037ece0c61f3b1a8fbbdd","market":"' + MARKET + '","timestamp":"1729084877448"}'
)

TICK_SIZE_CHANGE = (
    '{"event_type":"tick_size_change","asset_id":"' + ASSET + '","market":"' + MARKET + '",'
    '"old_tick_size":"0.01","new_tick_size":"0.001","timestamp":"100000000"}'
)

LAST_TRADE_PRICE = (
    '{"asset_id":"' + ASSET + '","event_type":"last_trade_price","fee_rate_bps":"0",'
    '"market":"' + MARKET + '","price":"0.456","side":"BUY","size":"219.217767","timestamp":"1750428146322"}'
)

BEST_BID_ASK = (
    '{"event_type":"best_bid_ask","market":"' + MARKET + '","asset_id":"' + ASSET + '",'
    '"best_bid":"0.73","best_ask":"0.77","spread":"0.04","timestamp":"1766789469958"}'
)

NEW_MARKET = (
    '{"id":"1031769","question":"Will NVIDIA (NVDA) close above $240 end of January?",'
    '"market":"0x311d0c4b6671ab54af4970c06fcf58662516f5168997bdda209ec3db5aa6b0c1",'
    '"slug":"nvda-above-240-on-january-30-2026","description":"This market will resolve...",'
    '"assets_ids":["76043073756653678226373981964075571318267289248134717369284518995922789326425",'
    '"31690934263385727664202099278545688007799199447969475608906331829650099442770"],'
    '"outcomes":["Yes","No"],"event_message":{"id":"125819","ticker":"nvda-above-in-january-2026",'
    '"slug":"nvda-above-in-january-2026","title":"Will NVIDIA (NVDA) close above ___ end of January?",'
    '"description":"..."},"timestamp":"1766790415550","event_type":"new_market"}'
)

MARKET_RESOLVED = (
    '{"id":"1031769","question":"Will NVIDIA (NVDA) close above $240 end of January?",'
    '"market":"0x311d0c4b6671ab54af4970c06fcf58662516f5168997bdda209ec3db5aa6b0c1",'
    '"slug":"nvda-above-240-on-january-30-2026","description":"...",'
    '"assets_ids":["76043073756653678226373981964075571318267289248134717369284518995922789326425",'
    '"31690934263385727664202099278545688007799199447969475608906331829650099442770"],'
    '"winning_asset_id":"76043073756653678226373981964075571318267289248134717369284518995922789326425",'
    '"winning_outcome":"Yes","event_message":{"id":"125819","ticker":"nvda-above-in-january-2026"},'
    '"timestamp":"1766790415550","event_type":"market_resolved"}'
)


def gamma_params(router: Router, sim: MarketSim) -> None:
    """What Gamma discovery tells the router: the fields the simulator's WebSocket books omit."""
    for m in sim.markets:
        router.set_params([a.asset_id for a in m.assets], m.min_order_size, m.neg_risk)
