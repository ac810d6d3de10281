"""An appliance directory made by `bft-anchor appliance init`, driven through the CLI.

Validator v0 of four is the appliance's own (its key is the seed `init` wrote); the
others sign with test seeds. The deployment names the coin and epoch 0's record, and
the simulated chain holds epochs 0 and 1 of 100 rounds, so no PoW node is needed.
Every request goes through `bft-anchor appliance sign` (anchorcli's main, in this
process unless BFT_ANCHOR_CLI_PROCESS=1: see anchorharness/clirun.py): what an operator
runs.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from anchorharness.clirun import CLI, run_cli
from anchorharness.fleet import MAGIC, seed_for
from anchornode.bftsim import SimulatedBFTChain
from appliance.config import ApplianceConfig
from appliance.signers.software import SoftwareSigner
from bftanchor.deployment import Deployment
from bftanchor.template import Coin

__all__ = ["CLI", "WINDOW", "CliAppliance", "run_cli"]  # CLI and run_cli: re-exported

WINDOW = 10  # the deployment's handover window, in rounds


class CliAppliance:
    """An initialised appliance directory `base/name` and the chain it serves.

    `tag` keeps the other validators' test seeds apart between test modules."""

    def __init__(self, base: Path, genesis: Coin, tag: str, *, name: str = "v0",
                 sim_seed: int = 0) -> None:
        self.base = base
        self.genesis = genesis
        self.sim = SimulatedBFTChain.create(4, 100, seed=sim_seed)
        self.dir = base / name
        made = run_cli("appliance", "init", str(self.dir), "--validator-id", "v0")
        assert made.returncode == 0, made.stderr
        self.signers = {"v0": SoftwareSigner.from_file(self.dir / "seed.txt")}
        for i in range(1, 4):
            self.signers[f"v{i}"] = SoftwareSigner.from_seed(seed_for(f"{tag}/v{i}"))
        self.records = {e: self.sim.make_record(e, {v: s.pow_key(e)
                                                    for v, s in self.signers.items()})
                        for e in (0, 1)}
        self.save_deployment()
        self.config = self.dir / "appliance.toml"
        self.n = 0

    def save_deployment(self) -> None:
        """Write deployment.json for the genesis coin and epoch 0's record (again after
        a test replaced self.records or self.genesis)."""
        Deployment("litecoin-regtest", MAGIC, self.genesis, self.records[0], WINDOW).save(
            self.dir / "deployment.json")

    def sign_cli(self, request: dict | str, config: Path | None = None
                 ) -> subprocess.CompletedProcess:
        """`appliance sign` on a request file (a dict is written as JSON); never a
        traceback."""
        self.n += 1
        path = self.base / f"req{self.n}.json"
        path.write_text(request if isinstance(request, str) else json.dumps(request))
        out = run_cli("appliance", "sign", "--config", str(config or self.config),
                      "--request", str(path))
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def _journal(self, config: Path | None = None) -> sqlite3.Connection:
        return sqlite3.connect(ApplianceConfig.load(config or self.config).journal)

    def decisions(self, config: Path | None = None) -> list[tuple[str, dict]]:
        """The journal's decisions, oldest first: (decision, detail)."""
        with self._journal(config) as db:
            rows = db.execute("SELECT decision, detail FROM decisions ORDER BY seq").fetchall()
        return [(d, json.loads(detail)) for d, detail in rows]

    def signed_rows(self) -> int:
        """How many signing rows the journal holds."""
        with self._journal() as db:
            return db.execute("SELECT COUNT(*) FROM signed WHERE kind = 'signed'").fetchone()[0]

    def signed(self, request: dict | str) -> dict:
        """Signed (exit 0, the verdict says so); the verdict."""
        out = self.sign_cli(request)
        verdict = json.loads(out.stdout) if out.stdout.strip() else {}
        assert out.returncode == 0 and verdict["signed"], (verdict, out.stderr)
        return verdict

    def refused(self, request: dict | str, *fragments: str) -> list[str]:
        """Refused (exit 1) with every fragment in the reasons, journaled as such, and no
        signing row left behind; the reasons."""
        before = self.signed_rows()
        out = self.sign_cli(request)
        verdict = json.loads(out.stdout) if out.stdout.strip() else {}
        assert out.returncode == 1 and not verdict["signed"], (verdict, out.stderr)
        text = " | ".join(verdict["reasons"])
        for f in fragments:
            assert f in text, text
        decision, detail = self.decisions()[-1]
        assert decision == "refused" and detail["reasons"] == verdict["reasons"]
        assert self.signed_rows() == before, "a refused request left a signing row"
        return verdict["reasons"]
