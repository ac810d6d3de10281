"""PoW chains this deployment can anchor on, as embit network parameters.

embit knows only Bitcoin's networks; Litecoin shares the transaction format and
differs only in address prefixes, so it is described here with the same keys.
"""

from __future__ import annotations

from embit.networks import NETWORKS

_BTC_TEST = NETWORKS["test"]

CHAINS: dict[str, dict] = {
    "bitcoin-main": dict(NETWORKS["main"], name="Bitcoin"),
    "bitcoin-test": dict(NETWORKS["test"], name="Bitcoin testnet"),
    "bitcoin-signet": dict(NETWORKS["signet"], name="Bitcoin signet"),
    "bitcoin-regtest": dict(NETWORKS["regtest"], name="Bitcoin regtest"),
    "litecoin-main": dict(
        NETWORKS["main"], name="Litecoin", p2pkh=b"\x30", p2sh=b"\x32", wif=b"\xb0", bech32="ltc"
    ),
    "litecoin-test": dict(
        _BTC_TEST, name="Litecoin testnet", p2pkh=b"\x6f", p2sh=b"\x3a", wif=b"\xef", bech32="tltc"
    ),
    "litecoin-regtest": dict(
        _BTC_TEST, name="Litecoin regtest", p2pkh=b"\x6f", p2sh=b"\x3a", wif=b"\xef", bech32="rltc"
    ),
}

# BIP44 coin types: every test network uses 1, so keys are never shared with mainnet.
COIN_TYPES = {
    "bitcoin-main": 0,
    "litecoin-main": 2,
}


def network(chain: str) -> dict:
    try:
        return CHAINS[chain]
    except KeyError:
        raise ValueError(f"unknown chain {chain!r}; known: {', '.join(sorted(CHAINS))}") from None


def coin_type(chain: str) -> int:
    network(chain)
    return COIN_TYPES.get(chain, 1)


def is_mainnet(chain: str) -> bool:
    return chain.endswith("-main")
