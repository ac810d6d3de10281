"""Jade RPC error codes and the exception that carries one back to the client.

The codes are the firmware's (main/utils/cbor_rpc.h) and match the constants in
hwilib/devices/jadepy/jade_error.py, which is how HWI maps them to its own errors
(hwilib/devices/jade.py, jade_exception(): BAD_PARAMETERS -> BadArgumentError,
USER_CANCELLED -> ActionCanceledError, NETWORK_MISMATCH -> DeviceConnectionError ...).
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = -32600
UNKNOWN_METHOD = -32601
BAD_PARAMETERS = -32602
INTERNAL_ERROR = -32603
USER_CANCELLED = -32000
PROTOCOL_ERROR = -32001
HW_LOCKED = -32002
NETWORK_MISMATCH = -32003


class RpcError(Exception):
    """An error reply: {"id": ..., "error": {"code", "message", "data"}}."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}


def bad_params(message: str) -> RpcError:
    return RpcError(BAD_PARAMETERS, message)
