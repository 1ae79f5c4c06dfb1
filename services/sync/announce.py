"""What sync publishes: pool states, prices, swaps and blocks, and the Clone snapshot.

One rule for every block sync applies, live or caught up at start (a cold start's buffered blocks,
a checkpoint's catch-up): the block's ``dex.pool.<id>`` states (and ``px.dex.<id>`` prices), then
its ``dex.block`` ``committed`` as the marker that the block is complete; reverts first announce
each unwound block (``reverted``), then the states the revert restored.

``PoolState.block`` (and ``block_hash``) is sync's head when the state was published or served:
the state is exact at that block. A live update is labelled with the block that produced it; a
snapshot item with the head at the snapshot's ``seq``. ``event_ns`` of every message is the time
of that block (the chain's timestamp, in ns; 0 when the source does not give one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.sync import amm
from services.sync.coordinator import StartupCoordinator
from services.sync.journal import BlockResult
from services.sync.pool import Pool
from shared.bus import Publisher
from shared.constants import DEX_BLOCK_TOPIC, dex_pool_topic, dex_swap_topic, dex_symbol, px_topic
from shared.exex import PoolUpdate
from shared.messages import BlockUpdate, Message, PoolState, Price, SnapshotRequest, Swap

V2_FEE = 3000  # UniswapV2Pair: 0.3 % on every swap, in hundredths of a bip as V3/V4 fees


def pool_state(pool: Pool, block: int, block_hash: bytes, event_ns: int = 0) -> PoolState:
    return PoolState(
        pool=pool.hex,
        protocol=pool.protocol,
        block=block,
        block_hash="0x" + block_hash.hex() if block_hash else "",
        token0=pool.token0,
        token1=pool.token1,
        fee=V2_FEE if pool.protocol == "v2" else pool.fee,
        tick_spacing=pool.tick_spacing,
        reserve0=str(pool.reserve0),
        reserve1=str(pool.reserve1),
        sqrt_price_x96=str(pool.sqrt_price_x96),
        tick=pool.tick,
        liquidity=str(pool.liquidity),
        price=pool.price(),
        event_ns=event_ns,
    )


def block_ns(timestamp: int) -> int:
    """A block's time (seconds) as ``event_ns``; 0 (unknown) stays 0."""
    return timestamp * 1_000_000_000 if 0 < timestamp < 2**63 // 1_000_000_000 else 0


class Announcer:
    def __init__(self, pub: Publisher, coord: StartupCoordinator) -> None:
        self.pub = pub
        self.coord = coord
        self.swaps_unpublished = 0  # Swap events with impossible amounts or price

    def _head(self) -> tuple[int, bytes]:
        head = self.coord.processor.head
        return head if head is not None else (0, b"")

    def pools(self, pools: Iterable[Pool]) -> None:
        """Each pool's state at our head (labelled with it), and its price."""
        number, bhash = self._head()
        ns = block_ns(self.coord.processor.head_timestamp)
        for pool in pools:
            state = pool_state(pool, number, bhash, ns)
            self.pub.publish(dex_pool_topic(pool.hex), state)
            symbol = dex_symbol(pool.hex)
            self.pub.publish(
                px_topic(symbol), Price(symbol=symbol, price=state.price, source="pool", event_ns=ns)
            )

    def reverted(self, result: BlockResult) -> None:
        for (number, bhash), stamp in zip(result.reverted, result.reverted_timestamps, strict=True):
            self.pub.publish(
                DEX_BLOCK_TOPIC,
                BlockUpdate(
                    number=number, hash="0x" + bhash.hex(), status="reverted", event_ns=block_ns(stamp)
                ),
            )

    def block(self, result: BlockResult, committed: bool, updates: Sequence[PoolUpdate] = ()) -> None:
        """A block applied (``committed``: the head is that block) or unwound: its messages in order."""
        self.reverted(result)
        self.pools(result.changed)
        if not committed:
            return
        proc = self.coord.processor
        assert proc.head is not None
        number, bhash = proc.head
        parent = proc.journal[-1].parent_hash if proc.journal else b""
        self.pub.publish(
            DEX_BLOCK_TOPIC,
            BlockUpdate(
                number=number,
                hash="0x" + bhash.hex(),
                parent_hash="0x" + parent.hex() if parent else "",
                status="committed",
                pools_changed=len(result.changed),
                event_ns=block_ns(proc.head_timestamp),
            ),
        )
        self.swaps(updates)

    def swaps(self, updates: Sequence[PoolUpdate]) -> None:
        """``dex.swap.<id>`` for order flow: amounts are the pool's signed deltas (V4's negated)."""
        pools = self.coord.processor.pools
        ns = block_ns(self.coord.processor.head_timestamp)
        for ev in updates:
            if ev.kind != "Swap":
                continue
            pool = pools.get(ev.pool)
            if pool is None or pool.protocol != ev.protocol:
                continue
            if not amm.swap_in_range(ev.protocol, ev.amount0, ev.amount1, ev.sqrt_price_x96):
                self.swaps_unpublished += 1  # impossible amounts or price: nothing to pass on
                continue
            sign = -1 if ev.protocol == "v4" else 1
            price = pool.price() if ev.protocol == "v2" else amm.price_from_sqrt(ev.sqrt_price_x96)
            self.pub.publish(
                dex_swap_topic(pool.hex),
                Swap(
                    pool=pool.hex,
                    protocol=ev.protocol,
                    block=ev.block,
                    amount0=str(sign * ev.amount0),
                    amount1=str(sign * ev.amount1),
                    price=price,
                    event_ns=ns,
                ),
            )

    def snapshot(self, request: SnapshotRequest) -> tuple[int, list[Message]]:
        """Every pool at our head, with the publisher seq it is valid at."""
        number, bhash = self._head()
        ns = block_ns(self.coord.processor.head_timestamp)
        self.pub.flush()
        items: list[Message] = []
        for pool in self.coord.processor.pools.values():
            if not request.prefix or dex_pool_topic(pool.hex).startswith(request.prefix):
                items.append(pool_state(pool, number, bhash, ns))
        return self.pub.seq, items
