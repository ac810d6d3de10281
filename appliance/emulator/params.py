"""Typed parameter getters with the firmware's semantics (main/utils/cbor_rpc.c).

The firmware treats a missing field, a null and a value of the wrong type the
same way ("no data"), and a string that does not fit its buffer as absent
(rpc_get_string writes nothing). These helpers return None in all those cases
so each handler can reply with the firmware's own error message.
"""

from __future__ import annotations

from typing import Any

from appliance.emulator.errors import BAD_PARAMETERS, RpcError

# main/utils/cbor_rpc.h MAX_PATH_LEN
MAX_PATH_LEN = 16
UINT32_MAX = 0xFFFFFFFF


def params_map(params: Any) -> dict[str, Any]:
    """GET_MSG_PARAMS (process_utils.h): params must be a map."""
    if not isinstance(params, dict):
        raise RpcError(BAD_PARAMETERS, "Expecting parameters map")
    return params


def has_data(params: dict[str, Any], name: str) -> bool:
    """rpc_has_field_data: present and not null."""
    return params.get(name) is not None


def get_str(params: dict[str, Any], name: str, bufsize: int | None = None) -> str | None:
    """rpc_get_string: the value must fit a buffer of `bufsize` bytes incl. NUL."""
    value = params.get(name)
    if not isinstance(value, str) or not value:
        return None
    if bufsize is not None and len(value.encode()) >= bufsize:
        return None
    return value


def get_bytes(params: dict[str, Any], name: str) -> bytes | None:
    value = params.get(name)
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def get_bool(params: dict[str, Any], name: str) -> bool | None:
    value = params.get(name)
    return value if isinstance(value, bool) else None


def optional_bool(params: dict[str, Any], name: str, error: str) -> bool:
    """An optional flag: False when it has no data, refused with the firmware's `error`
    when it is not a boolean."""
    if not has_data(params, name):
        return False
    flag = get_bool(params, name)
    if flag is None:
        raise RpcError(BAD_PARAMETERS, error)
    return flag


def get_uint(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def path_from(value: Any, max_len: int = MAX_PATH_LEN) -> list[int] | None:
    """rpc_get_bip32_path_from_value: an array of uint32 of at most MAX_PATH_LEN."""
    if not isinstance(value, list) or len(value) > max_len:
        return None
    out: list[int] = []
    for element in value:
        if isinstance(element, bool) or not isinstance(element, int):
            return None
        if not 0 <= element <= UINT32_MAX:
            return None
        out.append(element)
    return out


def get_path(params: dict[str, Any], name: str) -> list[int] | None:
    return path_from(params.get(name))
