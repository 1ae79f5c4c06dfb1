"""A real local chain for sync's tests: anvil + the real Uniswap V2/V3/V4 contracts + a random trader.

Synchronous on purpose (plain HTTP JSON-RPC): fixtures can be module-scoped, outside any event
loop. Contracts come from the npm packages' artifacts (``npm install`` in the repo root).
The truth the tests compare against is read from the contracts directly (getReserves, slot0,
liquidity, ticks(t) for every tick the trader ever used; V4 through StateView), independently of
the scraper under test.
"""

from __future__ import annotations

import json
import random
import subprocess
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_hash.auto import keccak

from tests.helpers import ROOT, require_binary
from tests.ports import free_port

NODE = ROOT / "node_modules"
UNI = NODE / "@uniswap"
ZERO = "0x" + "00" * 20
MAX_U256 = (1 << 256) - 1
Q96 = 1 << 96

ARTIFACTS = {
    "ERC20": UNI / "v2-core/build/ERC20.json",
    "V2Factory": UNI / "v2-core/build/UniswapV2Factory.json",
    "V3Factory": UNI / "v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json",
    "NPM": UNI
    / "v3-periphery/artifacts/contracts/NonfungiblePositionManager.sol/NonfungiblePositionManager.json",
    "SwapRouter": UNI / "v3-periphery/artifacts/contracts/SwapRouter.sol/SwapRouter.json",
    "PoolManager": UNI / "v4-core/out/PoolManager.sol/PoolManager.json",
    "ModifyTest": UNI / "v4-core/out/PoolModifyLiquidityTest.sol/PoolModifyLiquidityTest.json",
    "SwapTest": UNI / "v4-core/out/PoolSwapTest.sol/PoolSwapTest.json",
    "StateView": UNI / "v4-periphery/foundry-out/StateView.sol/StateView.json",
}


@cache
def bytecode(name: str) -> bytes:
    art = json.loads(Path(ARTIFACTS[name]).read_text())
    code = art["bytecode"]
    if isinstance(code, dict):
        code = code["object"]
    return bytes.fromhex(code.removeprefix("0x"))


def selector(signature: str) -> bytes:
    return bytes(keccak(signature.encode()))[:4]


def calldata(signature: str, *args: Any) -> str:
    types = signature[signature.index("(") + 1 : -1]
    return "0x" + (selector(signature) + abi_encode(_split(types), list(args))).hex()


def _split(types: str) -> list[str]:
    """Top-level comma split of an ABI type list ("(a,b),c" -> ["(a,b)", "c"])."""
    out, depth, cur = [], 0, ""
    for ch in types:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur:
        out.append(cur)
    return out


def anvil_binary() -> str:
    """The native anvil binary the npm package installed (not its node wrapper: killing the
    wrapper would orphan the node), else whatever ``require_binary`` finds."""
    for path in sorted(NODE.glob("@foundry-rs/anvil-*/bin/anvil")):
        return str(path)
    return require_binary("anvil")


class Anvil:
    """anvil from node_modules on a free port, silent, offline; killed and reaped by stop()."""

    def __init__(self, binary: str, block_time: float | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [binary, "--port", str(self.port), "--silent", "--gas-limit", "1000000000"]
        args += ["--disable-code-size-limit", "--chain-id", "31337"]
        if block_time:
            args += ["--block-time", str(block_time)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._id = 0
        for _ in range(400):
            try:
                self.rpc("eth_chainId")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"anvil exited: {self.proc.stderr.read()!r}") from None  # type: ignore[union-attr]
                _pause()
        raise RuntimeError("anvil did not answer")

    def rpc(self, method: str, *params: Any) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        req = urllib.request.Request(self.url, body.encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            reply = json.loads(resp.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def _pause() -> None:
    """Waits ~20 ms for anvil's port to open (startup only: there is no event to wait on)."""
    import select

    select.select([], [], [], 0.02)


def price_at_tick(tick: int) -> int:
    from services.sync import amm

    return amm.get_sqrt_ratio_at_tick(tick)


@dataclass
class V3Pool:
    address: str
    fee: int
    spacing: int
    ticks_used: set[int] = field(default_factory=set)


@dataclass
class V4Pool:
    key: tuple[str, str, int, int, str]
    pool_id: bytes
    ticks_used: set[int] = field(default_factory=set)


class Chain:
    """Deploys tokens, V2 pairs, V3 pools at several fee tiers, V4 pools; reads the truth back."""

    def __init__(self, anvil: Anvil) -> None:
        self.a = anvil
        self.me: str = anvil.rpc("eth_accounts")[0]
        self.batching = False  # True while the trader queues transactions for one block
        self.tokens = sorted((self.deploy("ERC20", ["uint256"], [10**40]) for _ in range(3)), key=str.lower)
        t0, t1, t2 = self.tokens
        self.v2_factory = self.deploy("V2Factory", ["address"], [self.me])
        self.v2_pairs: list[str] = []
        for a, b in ((t0, t1), (t1, t2)):
            self.send(self.v2_factory, calldata("createPair(address,address)", a, b))
            pair = self.call_addr(self.v2_factory, calldata("getPair(address,address)", a, b))
            self.v2_pairs.append(pair)
        self.v3_factory = self.deploy("V3Factory", [], [])
        weth = self.tokens[2]  # never used as WETH; the periphery only needs an address
        self.npm = self.deploy("NPM", ["address", "address", "address"], [self.v3_factory, weth, ZERO])
        self.router = self.deploy("SwapRouter", ["address", "address"], [self.v3_factory, weth])
        self.v3_pools: list[V3Pool] = []
        for a, b, fee, spacing, tick in (
            (t0, t1, 500, 10, 0),
            (t0, t1, 3000, 60, 120),
            (t1, t2, 10000, 200, -2000),
        ):
            self.send(self.v3_factory, calldata("createPool(address,address,uint24)", a, b, fee))
            pool = self.call_addr(self.v3_factory, calldata("getPool(address,address,uint24)", a, b, fee))
            self.send(pool, calldata("initialize(uint160)", price_at_tick(tick)))
            self.v3_pools.append(V3Pool(pool, fee, spacing))
        self.manager = self.deploy("PoolManager", ["address"], [self.me])
        self.modify = self.deploy("ModifyTest", ["address"], [self.manager])
        self.swapper = self.deploy("SwapTest", ["address"], [self.manager])
        self.state_view = self.deploy("StateView", ["address"], [self.manager])
        self.v4_pools: list[V4Pool] = []
        for a, b, fee, spacing, tick in ((t0, t1, 3000, 60, 0), (t1, t2, 500, 10, 300)):
            key = (a, b, fee, spacing, ZERO)
            self.send(
                self.manager,
                calldata(
                    "initialize((address,address,uint24,int24,address),uint160)", key, price_at_tick(tick)
                ),
            )
            pid = bytes(keccak(abi_encode(["address", "address", "uint24", "int24", "address"], list(key))))
            self.v4_pools.append(V4Pool(key, pid))
        for token in self.tokens:
            for spender in (self.npm, self.router, self.modify, self.swapper):
                self.send(token, calldata("approve(address,uint256)", spender, MAX_U256))

    # -- plumbing -------------------------------------------------------------------------------

    def deploy(self, name: str, types: list[str], args: list[Any]) -> str:
        data = "0x" + (bytecode(name) + abi_encode(types, args)).hex()
        receipt = self.a.rpc(
            "eth_sendTransactionSync", {"from": self.me, "data": data, "gas": hex(30_000_000)}
        )
        if receipt is None or receipt["status"] != "0x1":
            raise RuntimeError(f"deploying {name} failed: {receipt}")
        return str(receipt["contractAddress"])

    def send(self, to: str, data: str, gas: int = 10_000_000) -> None:
        """Send a transaction; with automine on, returns once it is mined (eth_sendTransactionSync)."""
        method = "eth_sendTransaction" if self.batching else "eth_sendTransactionSync"
        receipt = self.a.rpc(method, {"from": self.me, "to": to, "data": data, "gas": hex(gas)})
        if not self.batching and receipt["status"] != "0x1":
            raise RuntimeError(f"transaction to {to} ({data[:10]}) reverted")

    def call(self, to: str, data: str, block: str = "latest") -> bytes:
        return bytes.fromhex(self.a.rpc("eth_call", {"to": to, "data": data}, block)[2:])

    def call_addr(self, to: str, data: str) -> str:
        return str(abi_decode(["address"], self.call(to, data))[0])

    def mine(self, n: int = 1) -> None:
        self.a.rpc("anvil_mine", hex(n)) if n > 1 else self.a.rpc("evm_mine")

    def head(self) -> tuple[int, bytes]:
        block = self.a.rpc("eth_getBlockByNumber", "latest", False)
        return int(block["number"], 16), bytes.fromhex(block["hash"][2:])

    # -- specs for the service ------------------------------------------------------------------

    def specs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"protocol": "v2", "address": p} for p in self.v2_pairs]
        out += [{"protocol": "v3", "address": p.address} for p in self.v3_pools]
        for p in self.v4_pools:
            c0, c1, fee, spacing, hooks = p.key
            out.append(
                {
                    "protocol": "v4",
                    "currency0": c0,
                    "currency1": c1,
                    "fee": fee,
                    "tick_spacing": spacing,
                    "hooks": hooks,
                }
            )
        return out

    # -- the truth, from the contracts ----------------------------------------------------------

    def truth(self, block: int | None = None) -> dict[bytes, tuple[Any, ...]]:
        """key -> (reserve0, reserve1) | (sqrt, tick, liquidity, {tick: net}) read from the contracts."""
        tag = hex(block) if block is not None else "latest"
        out: dict[bytes, tuple[Any, ...]] = {}
        for pair in self.v2_pairs:
            r0, r1, _ = abi_decode(
                ["uint112", "uint112", "uint32"], self.call(pair, calldata("getReserves()"), tag)
            )
            out[bytes.fromhex(pair[2:].lower())] = (r0, r1)
        for pool in self.v3_pools:
            slot0 = abi_decode(["uint160", "int24"], self.call(pool.address, calldata("slot0()"), tag)[:64])
            (liq,) = abi_decode(["uint128"], self.call(pool.address, calldata("liquidity()"), tag))
            nets = {}
            for t in sorted(pool.ticks_used):
                gross, net = abi_decode(
                    ["uint128", "int128"], self.call(pool.address, calldata("ticks(int24)", t), tag)[:64]
                )
                if gross:
                    nets[t] = net
            out[bytes.fromhex(pool.address[2:].lower())] = (slot0[0], slot0[1], liq, nets)
        for v4 in self.v4_pools:
            sv = self.state_view
            sqrt, tick = abi_decode(
                ["uint160", "int24"], self.call(sv, calldata("getSlot0(bytes32)", v4.pool_id), tag)[:64]
            )
            (liq,) = abi_decode(
                ["uint128"], self.call(sv, calldata("getLiquidity(bytes32)", v4.pool_id), tag)
            )
            nets = {}
            for t in sorted(v4.ticks_used):
                gross, net = abi_decode(
                    ["uint128", "int128"],
                    self.call(sv, calldata("getTickLiquidity(bytes32,int24)", v4.pool_id, t), tag),
                )
                if gross:
                    nets[t] = net
            out[v4.pool_id] = (sqrt, tick, liq, nets)
        return out


def pools_view(pools: dict[bytes, Any]) -> dict[bytes, tuple[Any, ...]]:
    """The same shape as Chain.truth() from sync's pools."""
    out: dict[bytes, tuple[Any, ...]] = {}
    for key, pool in pools.items():
        if pool.protocol == "v2":
            out[key] = (pool.reserve0, pool.reserve1)
        else:
            out[key] = (
                pool.sqrt_price_x96,
                pool.tick,
                pool.liquidity,
                {t: n for t, (_, n) in sorted(pool.ticks.items())},
            )
    return out


class Trader:
    """Random swaps, mints and burns over every pool; ``block()`` sends a batch and mines it."""

    def __init__(self, chain: Chain, seed: int = 1) -> None:
        self.c = chain
        self.rng = random.Random(seed)
        self.salt = 0
        self.v4_positions: dict[bytes, list[tuple[int, int, bytes]]] = {}

    def block(self, ops: int = 8) -> tuple[int, bytes]:
        """Send ``ops`` random transactions and mine them into one block (automine off)."""
        a = self.c.a
        a.rpc("evm_setAutomine", False)
        self.c.batching = True
        try:
            for _ in range(ops):
                self.op()
            self.c.mine()
        finally:
            self.c.batching = False
            a.rpc("evm_setAutomine", True)
        return self.c.head()

    def op(self) -> None:
        roll = self.rng.random()
        if roll < 0.3:
            self.v2_op()
        elif roll < 0.65:
            self.v3_op()
        else:
            self.v4_op()

    # V2: transfer in, then mint / swap / burn on the pair directly
    def v2_op(self) -> None:
        c, rng = self.c, self.rng
        pair = rng.choice(c.v2_pairs)
        (t0,) = abi_decode(["address"], c.call(pair, calldata("token0()")))
        (t1,) = abi_decode(["address"], c.call(pair, calldata("token1()")))
        r0, r1, _ = abi_decode(["uint112", "uint112", "uint32"], c.call(pair, calldata("getReserves()")))
        roll = rng.random()
        if r0 == 0 or roll < 0.3:
            a0 = rng.randint(10**18, 10**21)
            a1 = a0 * r1 // r0 if r0 else rng.randint(10**18, 10**21)
            c.send(t0, calldata("transfer(address,uint256)", pair, a0))
            c.send(t1, calldata("transfer(address,uint256)", pair, max(a1, 1)))
            c.send(pair, calldata("mint(address)", c.me))
        elif roll < 0.85:
            zero_for_one = rng.random() < 0.5
            rin, rout = (r0, r1) if zero_for_one else (r1, r0)
            amount_in = rng.randint(1, max(2, rin // 50))
            out = amount_in * 997 * rout // (rin * 1000 + amount_in * 997) * 9 // 10
            c.send(t0 if zero_for_one else t1, calldata("transfer(address,uint256)", pair, amount_in))
            args = (0, out) if zero_for_one else (out, 0)
            c.send(pair, calldata("swap(uint256,uint256,address,bytes)", *args, c.me, b""))
        else:
            (lp,) = abi_decode(["uint256"], c.call(pair, calldata("balanceOf(address)", c.me)))
            if lp:
                c.send(pair, calldata("transfer(address,uint256)", pair, lp * rng.randint(1, 30) // 100))
                c.send(pair, calldata("burn(address)", c.me))

    def v3_op(self) -> None:
        c, rng = self.c, self.rng
        pool = rng.choice(c.v3_pools)
        (t0,) = abi_decode(["address"], c.call(pool.address, calldata("token0()")))
        (t1,) = abi_decode(["address"], c.call(pool.address, calldata("token1()")))
        _, tick = abi_decode(["uint160", "int24"], c.call(pool.address, calldata("slot0()"))[:64])
        roll = rng.random()
        (nft,) = abi_decode(["uint256"], c.call(c.npm, calldata("balanceOf(address)", c.me)))
        if roll < 0.35 or nft == 0:
            s = pool.spacing
            if rng.random() < 0.1:
                lower, upper = -887272 // s * s, 887272 // s * s  # full range
            else:
                lower = (tick // s + rng.randint(-30, 25)) * s
                upper = lower + rng.randint(1, 12) * s
            pool.ticks_used.update((lower, upper))
            amt = rng.randint(10**18, 10**21)
            params = (t0, t1, pool.fee, lower, upper, amt, amt, 0, 0, c.me, 2**40)
            c.send(
                c.npm,
                calldata(
                    "mint((address,address,uint24,int24,int24,uint256,uint256,uint256,uint256,address,uint256))",
                    params,
                ),
            )
        elif roll < 0.75:
            zero_for_one = rng.random() < 0.5
            amount = rng.randint(10**16, 10**20)
            tin, tout = (t0, t1) if zero_for_one else (t1, t0)
            swap = (tin, tout, pool.fee, c.me, 2**40, amount, 0, 0)
            c.send(
                c.router,
                calldata(
                    "exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))",
                    swap,
                ),
            )
        else:
            index = rng.randrange(nft)
            (token_id,) = abi_decode(
                ["uint256"], c.call(c.npm, calldata("tokenOfOwnerByIndex(address,uint256)", c.me, index))
            )
            pos = c.call(c.npm, calldata("positions(uint256)", token_id))
            liquidity = abi_decode(["uint128"], pos[7 * 32 : 8 * 32])[0]
            if liquidity:
                part = liquidity if rng.random() < 0.3 else rng.randint(1, liquidity)
                c.send(
                    c.npm,
                    calldata(
                        "decreaseLiquidity((uint256,uint128,uint256,uint256,uint256))",
                        (token_id, part, 0, 0, 2**40),
                    ),
                )

    def v4_op(self) -> None:
        c, rng = self.c, self.rng
        pool = rng.choice(c.v4_pools)
        sv = c.state_view
        _, tick = abi_decode(
            ["uint160", "int24"], c.call(sv, calldata("getSlot0(bytes32)", pool.pool_id))[:64]
        )
        spacing = pool.key[3]
        key_t = "(address,address,uint24,int24,address)"
        roll = rng.random()
        positions = sorted(pool.ticks_used)
        if roll < 0.35 or len(positions) < 2:
            lower = (tick // spacing + rng.randint(-30, 25)) * spacing
            upper = lower + rng.randint(1, 12) * spacing
            pool.ticks_used.update((lower, upper))
            delta = rng.randint(10**15, 10**19)
            self.salt += 1
            salt = self.salt.to_bytes(32, "big")
            self.v4_positions.setdefault(pool.pool_id, []).append((lower, upper, salt))
            params = (lower, upper, delta, salt)
            c.send(
                c.modify,
                calldata(
                    f"modifyLiquidity({key_t},(int24,int24,int256,bytes32),bytes)", pool.key, params, b""
                ),
            )
        elif roll < 0.75:
            zero_for_one = rng.random() < 0.5
            amount = -rng.randint(10**14, 10**18)  # exact input
            from services.sync import amm

            limit = amm.MIN_SQRT_RATIO + 1 if zero_for_one else amm.MAX_SQRT_RATIO - 1
            c.send(
                c.swapper,
                calldata(
                    f"swap({key_t},(bool,int256,uint160),(bool,bool),bytes)",
                    pool.key,
                    (zero_for_one, amount, limit),
                    (False, False),
                    b"",
                ),
            )
        else:
            mine = self.v4_positions.get(pool.pool_id, [])
            if not mine:
                return
            lower, upper, salt = rng.choice(mine)
            position_id = self._position_id(lower, upper, salt)
            (liq,) = abi_decode(
                ["uint128"],
                c.call(sv, calldata("getPositionLiquidity(bytes32,bytes32)", pool.pool_id, position_id)),
            )
            if liq:
                part = liq if rng.random() < 0.3 else rng.randint(1, liq)
                params = (lower, upper, -part, salt)
                c.send(
                    c.modify,
                    calldata(
                        f"modifyLiquidity({key_t},(int24,int24,int256,bytes32),bytes)", pool.key, params, b""
                    ),
                )

    def _position_id(self, lower: int, upper: int, salt: bytes) -> bytes:
        """Position.calculatePositionKey: keccak256(abi.encodePacked(owner, int24 lower, int24 upper, salt))."""
        owner = bytes.fromhex(self.c.modify[2:])
        return bytes(
            keccak(
                owner + (lower % (1 << 24)).to_bytes(3, "big") + (upper % (1 << 24)).to_bytes(3, "big") + salt
            )
        )
