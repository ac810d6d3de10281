"""The coin input's BIP68 one-block lock, enforced by a real litecoind: a child checkpoint
offered in its parent's block is refused by the mempool and by block validation, and
accepted one block later. ("At most one per PoW block" is consensus, not the schedule.)"""

from __future__ import annotations

import pytest
from helpers import Fleet

from anchornode.pow.regtest import RegtestNode
from anchornode.pow.rpc import RpcError
from bftanchor.template import COIN_SEQUENCE, TOPUP_SEQUENCE

pytestmark = pytest.mark.integration

CSV_HEIGHT = 432  # Litecoin (and Bitcoin) regtest bury BIP68/112/113 at this height


@pytest.fixture(scope="module")
def csv_node():
    """A private node past CSV's activation. MWEB is kept from activating (NEVER_ACTIVE):
    with MWEB active Litecoin 0.21's generateblock fails an internal assertion
    (block.vtx.size() == 1), and the block-validity half of this test needs it."""
    node = RegtestNode(extra_args=["-vbparams=mweb:-2:-2"]).start()
    try:
        node.create_wallet("test")
        node.mine(CSV_HEIGHT + 10)
        assert node.rpc.getblockchaininfo()["softforks"]["csv"]["active"]
        yield node
    finally:
        node.stop()


def test_child_in_its_parents_block_is_refused_then_accepted_a_block_later(csv_node, tmp_path):
    node = csv_node
    fleet = Fleet(node, tmp_path, tag="bip68")
    parent = fleet.checkpoint(fleet.qc(5), mine=False)  # in the mempool, unconfirmed
    # The appliances sign the child (offline, they cannot know the parent is unconfirmed)...
    child, _ = fleet.signed(fleet.qc(10))
    assert child.vin[0].sequence == COIN_SEQUENCE
    raw = child.serialize().hex()

    # ...but the node's mempool refuses it while its parent is unconfirmed,
    verdict = node.rpc.testmempoolaccept([raw])[0]
    assert not verdict["allowed"] and verdict["reject-reason"] == "non-BIP68-final"
    with pytest.raises(RpcError, match="non-BIP68-final"):
        node.rpc.sendrawtransaction(raw)
    # and block validation refuses a block that holds both.
    address = node.wallet_rpc.getnewaddress("", "bech32")
    height = node.rpc.getblockcount()
    with pytest.raises(RpcError, match="bad-txns-nonfinal"):
        node.rpc.generateblock(address, [parent, raw])
    assert node.rpc.getblockcount() == height

    # Control: the same child with the old nSequence (no relative lock) is accepted in the
    # parent's block, so the refusal above is the lock's doing.
    old = fleet.forged(fleet.qc(10), TOPUP_SEQUENCE)
    v = node.rpc.testmempoolaccept([old.serialize().hex()])[0]
    assert v["allowed"], v

    # One block later the parent is confirmed and the child is final.
    node.mine(1)
    assert node.rpc.testmempoolaccept([raw])[0]["allowed"]
    node.rpc.sendrawtransaction(raw)
    block = node.mine(1)[0]
    info = node.rpc.getrawtransaction(child.txid().hex(), True)
    assert info["blockhash"] == block
    parent_height = node.rpc.getblockheader(
        node.rpc.getrawtransaction(parent, True)["blockhash"])["height"]
    assert node.rpc.getblockheader(block)["height"] == parent_height + 1


def test_appliance_refuses_a_coin_input_without_the_lock(csv_node, tmp_path):
    fleet = Fleet(csv_node, tmp_path, tag="no-lock")
    qc = fleet.qc(5)
    proposal = fleet.propose(qc)
    proposal.psbt.inputs[0].sequence = TOPUP_SEQUENCE  # the old format: no relative lock
    outcome = fleet.appliances["v0"].handle_sign(*fleet.request(proposal.psbt, qc))
    assert not outcome.signed
    assert "input 0 nSequence is 0xfffffffd, expected 0x1" in outcome.reasons
