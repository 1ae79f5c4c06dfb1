"""sync: Uniswap V2/V3/V4 pool state kept exactly in step with the chain, reorgs reverted."""

from shared.compiled import guard

guard(__name__)  # the compiled core only if built from these sources (shared/compiled.py)
