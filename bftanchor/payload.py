"""The 53-byte OP_RETURN payload that anchors one QC (DESIGN.md, fixed format).

magic 4 | version 1 | epoch u64be | round u64be | commit_state_id 32
"""

from __future__ import annotations

from dataclasses import dataclass

from bftanchor.errors import PayloadError

PAYLOAD_LEN = 53
VERSION = 1
DEFAULT_MAGIC = b"BFTA"
OP_RETURN = 0x6A
_PUSH_53 = 0x35  # a direct push of 53 bytes: the only minimal encoding for this length
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Payload:
    epoch: int
    round: int
    commit_state_id: bytes
    magic: bytes = DEFAULT_MAGIC
    version: int = VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.magic, bytes) or len(self.magic) != 4:
            raise PayloadError("magic must be exactly 4 bytes")
        if self.version != VERSION:
            raise PayloadError(f"unsupported payload version {self.version}, expected {VERSION}")
        for name in ("epoch", "round"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
                raise PayloadError(f"{name} must be an unsigned 64-bit integer, got {value!r}")
        if not isinstance(self.commit_state_id, bytes) or len(self.commit_state_id) != 32:
            raise PayloadError("commit_state_id must be exactly 32 bytes")

    def encode(self) -> bytes:
        return (
            self.magic
            + bytes([self.version])
            + self.epoch.to_bytes(8, "big")
            + self.round.to_bytes(8, "big")
            + self.commit_state_id
        )

    def script(self) -> bytes:
        """The output script: OP_RETURN followed by one minimal push of the payload."""
        return bytes([OP_RETURN, _PUSH_53]) + self.encode()

    @classmethod
    def decode(cls, data: bytes, magic: bytes | None = DEFAULT_MAGIC) -> Payload:
        """Parse 53 payload bytes; with magic=None any deployment tag is accepted."""
        if len(data) != PAYLOAD_LEN:
            raise PayloadError(f"payload is {len(data)} bytes, expected {PAYLOAD_LEN}")
        if magic is not None and data[:4] != magic:
            raise PayloadError(f"wrong magic {data[:4].hex()}, expected {magic.hex()}")
        if data[4] != VERSION:
            raise PayloadError(f"unsupported payload version {data[4]}, expected {VERSION}")
        return cls(
            magic=bytes(data[:4]),
            version=data[4],
            epoch=int.from_bytes(data[5:13], "big"),
            round=int.from_bytes(data[13:21], "big"),
            commit_state_id=bytes(data[21:53]),
        )

    @classmethod
    def from_script(cls, script: bytes, magic: bytes | None = DEFAULT_MAGIC) -> Payload:
        """Parse an output script, insisting on OP_RETURN and the one minimal push."""
        if not script or script[0] != OP_RETURN:
            raise PayloadError("output script does not start with OP_RETURN")
        if len(script) < 2:
            raise PayloadError("OP_RETURN script has no push")
        if script[1] != _PUSH_53:
            raise PayloadError(
                f"OP_RETURN push opcode is 0x{script[1]:02x}, expected a direct push of 53 (0x35)"
            )
        if len(script) != 2 + PAYLOAD_LEN:
            raise PayloadError(
                f"OP_RETURN script is {len(script)} bytes, expected {2 + PAYLOAD_LEN}"
            )
        return cls.decode(script[2:], magic)
