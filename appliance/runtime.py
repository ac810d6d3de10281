"""Build a running appliance (deployment, journal, signer) from its config file."""

from __future__ import annotations

from appliance.config import ApplianceConfig, ConfigError
from appliance.journal import Journal
from appliance.signers.base import Signer, SignerError
from appliance.signers.software import SoftwareSigner
from appliance.signing import Appliance
from bftanchor.deployment import Deployment
from bftanchor.epoch import HARDENED


def make_signer(config: ApplianceConfig, coin_type: int,
                deployment: Deployment | None = None) -> Signer:
    """The configured signer; given the deployment, a device names its wallets after it."""
    sc = config.signer
    if sc.kind == "software":
        assert sc.seed_file is not None
        return SoftwareSigner.from_file(sc.seed_file, coin_type=coin_type)
    if sc.kind == "hwi":
        from appliance.signers.hwi import HWISigner  # needs hwilib; only loaded when configured

        tag = deployment.device_tag if deployment is not None else None
        return HWISigner.from_config(sc, coin_type=coin_type, wallet_tag=tag)
    raise ConfigError(f"unknown signer kind {sc.kind!r}")


def open_appliance(config: ApplianceConfig) -> Appliance:
    deployment = Deployment.load(config.deployment)
    coin_type = deployment.epoch0.validators[0].origin_path[1] - HARDENED
    journal = Journal(config.journal, deployment.genesis, config.journal_id)
    try:
        signer = make_signer(config, coin_type, deployment)
    except SignerError as exc:
        journal.close()
        raise ConfigError(f"signer: {exc}") from exc
    return Appliance(deployment, journal, signer, config.limits)
