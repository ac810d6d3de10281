"""Secret files are private from their first byte; listeners on every interface warn."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from anchornode.listener import warn_if_public
from appliance.signers.base import SignerError
from appliance.signers.software import SoftwareSigner
from bftanchor.secretfile import SecretFileError, check_private, write_secret


def test_write_secret_is_0600_from_creation_and_never_overwrites(tmp_path):
    old = os.umask(0)  # even with a permissive umask
    try:
        write_secret(tmp_path / "seed.txt", "hex:" + "11" * 32 + "\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "seed.txt").stat().st_mode) == 0o600
    with pytest.raises(SecretFileError, match="never overwritten"):
        write_secret(tmp_path / "seed.txt", "other")
    assert (tmp_path / "seed.txt").read_text().startswith("hex:11")


def test_a_world_readable_seed_is_refused(tmp_path):
    seed = tmp_path / "seed.txt"
    write_secret(seed, "hex:" + "22" * 32 + "\n")
    SoftwareSigner.from_file(seed)  # private: fine
    seed.chmod(0o644)
    with pytest.raises(SignerError, match=r"readable by others \(mode 0644\)"):
        SoftwareSigner.from_file(seed)
    with pytest.raises(SecretFileError):
        check_private(seed)


@pytest.mark.parametrize("host, public", [("0.0.0.0", True), ("::", True), ("", True),
                                          ("127.0.0.1", False), ("10.1.2.3", False),
                                          ("localhost", False)])
def test_listeners_on_every_interface_warn(host, public, caplog):
    with caplog.at_level(logging.WARNING, logger="bft_anchor.node"):
        assert warn_if_public("metrics", host) is public
    assert ("every interface" in caplog.text) is public
