"""Fixtures: one anvil with the real Uniswap contracts per test module, state reverted between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sync.chain import Anvil, Chain, anvil_binary


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    node = Anvil(anvil_binary())
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def deployed(anvil: Anvil) -> Chain:
    return Chain(anvil)


@pytest.fixture
def chain(deployed: Chain) -> Iterator[Chain]:
    """The deployed chain; every change a test makes is reverted afterwards (evm_snapshot/evm_revert)."""
    snap = deployed.a.rpc("evm_snapshot")
    try:
        yield deployed
    finally:
        deployed.a.rpc("evm_setAutomine", True)
        deployed.a.rpc("evm_revert", snap)
