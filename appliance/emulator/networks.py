"""Jade network names, their MAIN/TEST type, and the embit parameters for each.

Jade accepts 'mainnet', 'liquid', 'testnet', 'testnet-liquid', 'localtest' and
'localtest-liquid' (docs/index.rst, "Several calls require a network parameter";
main/utils/network.c isValidNetwork). A wallet is pinned to one network *type*
(MAIN or TEST, main/keychain.c network_type_restriction); requests for the other
type fail with NETWORK_MISMATCH (process_utils.h CHECK_NETWORK_CONSISTENT).
HWI maps its chains to these names in hwilib/devices/jade.py JadeClient.NETWORKS.
"""

from __future__ import annotations

from typing import Any, Literal

from embit.networks import NETWORKS

NetworkType = Literal["MAIN", "TEST"]

_TYPES: dict[str, NetworkType] = {
    "mainnet": "MAIN",
    "liquid": "MAIN",
    "testnet": "TEST",
    "testnet-liquid": "TEST",
    "localtest": "TEST",
    "localtest-liquid": "TEST",
}

# Address/xpub parameters: localtest is regtest (bcrt1 addresses).
_EMBIT: dict[str, str] = {"mainnet": "main", "testnet": "test", "localtest": "regtest"}


def is_valid(name: Any) -> bool:
    return isinstance(name, str) and name in _TYPES


def network_type(name: str) -> NetworkType:
    return _TYPES[name]


def is_liquid(name: str) -> bool:
    return "liquid" in name


def embit_params(name: str) -> dict[str, Any]:
    """embit network parameters (address prefixes) for a bitcoin network name."""
    return NETWORKS[_EMBIT[name]]


def xpub_version(name: str) -> bytes:
    """wallet_get_xpub (main/wallet.c) uses xpub for MAIN and tpub for TEST networks."""
    return NETWORKS["main" if network_type(name) == "MAIN" else "test"]["xpub"]


def bip44_coin(name: str) -> int:
    """The BIP44 coin type the firmware expects in standard paths (0 main, 1 test)."""
    return 0 if network_type(name) == "MAIN" else 1
