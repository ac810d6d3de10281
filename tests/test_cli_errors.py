"""Every subcommand meets the exit-status contract on bad input: one line naming the input.

A table of bad inputs of every kind (missing, empty, wrong type, directory for a file,
malformed JSON/TOML, out-of-range numbers, unreachable sockets and nodes, occupied ports)
runs through `anchorcli.main.main` in this process: no PoW node, no device. Each row
asserts the exit status, that standard error is exactly one line starting with the
command and naming the input, and that no traceback leaked.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from anchorcli.main import main
from bftanchor.secretfile import write_secret


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad-inputs")
    out = {"dir": str(d), "missing": str(d / "missing.json")}
    for name, text in {
        "empty.json": "",
        "blank.toml": "  \n",
        "bad.json": "{not json",
        "list.json": "[1, 2]",
        "string.json": '"psbt"',
        "bad.toml": "x = [",
        "obj.json": '{"a": 1}',
        "badreq.json": '{"psbt": 5, "qc": {}}',
        "noqc.json": '{"psbt": "cHNidP8="}',
        "cookie": "no-colon-here",
        "short.secret": "tooshort",
        "seed.txt": "",
        "binary.bin": "",
    }.items():
        (d / name).write_text(text)
        out[name] = str(d / name)
    (d / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 8)
    # An appliance config whose deployment file does not exist.
    (d / "app").mkdir()
    (d / "app" / "appliance.toml").write_text(
        'deployment = "deployment.json"\njournal = "journal.sqlite"\nvalidator_id = "v0"\n'
        '[signer]\nkind = "software"\nseed_file = "seed.txt"\n'
        "[limits]\nmax_fee_sat = 1000\nmax_fee_rate = 10.0\n"
    )
    out["app.toml"] = str(d / "app" / "appliance.toml")
    (d / "file-not-dir").write_text("x")
    out["file"] = str(d / "file-not-dir")
    # A unix socket path nobody listens on any more.
    dead = d / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()
    out["dead.sock"] = str(dead)
    # A real deployment (the console's test world), and one naming a chain nobody knows.
    from test_tui_world import World

    world = World(d)
    deployment = d / "deployment.json"
    world.deployment.save(deployment)
    world.close()
    import json as _json

    wrong = _json.loads(deployment.read_text())
    wrong["chain"] = "dogecoin-main"
    (d / "wrongchain").mkdir()
    (d / "wrongchain" / "deployment.json").write_text(_json.dumps(wrong))
    (d / "wrongchain" / "appliance.toml").write_text(
        (d / "app" / "appliance.toml").read_text())
    write_secret(d / "wrongchain" / "seed.txt", " ".join(["abandon"] * 11 + ["about"]) + "\n")
    out["wrongchain.toml"] = str(d / "wrongchain" / "appliance.toml")
    # A working appliance (software keys), to reach the checks after its config.
    (d / "goodapp").mkdir()
    (d / "goodapp" / "appliance.toml").write_text(
        (d / "app" / "appliance.toml").read_text().replace(
            'deployment = "deployment.json"', f'deployment = "{deployment}"'))
    write_secret(d / "goodapp" / "seed.txt", " ".join(["abandon"] * 11 + ["about"]) + "\n")
    out["goodapp.toml"] = str(d / "goodapp" / "appliance.toml")
    # An appliance whose HWI device is not there.
    (d / "nodevice").mkdir()
    (d / "nodevice" / "appliance.toml").write_text(
        f'deployment = "{deployment}"\njournal = "journal.sqlite"\nvalidator_id = "v0"\n'
        '[signer]\nkind = "hwi"\ndevice_type = "jade"\ndevice_path = "tcp:127.0.0.1:1"\n'
        "[limits]\nmax_fee_sat = 1000\nmax_fee_rate = 10.0\n")
    out["nodevice.toml"] = str(d / "nodevice" / "appliance.toml")
    # Node configs: PoW node unreachable, PoW node refusing the password, no QC source.
    (d / "qc" / "epochs").mkdir(parents=True)
    (d / "bft.key").write_text("11" * 32 + "\n")
    for name, url, qc in (("unreachable", "http://127.0.0.1:1", "qc"),
                          ("unauthorised", "http://u:wrong@127.0.0.1:{auth_port}", "qc"),
                          ("noqc", "http://127.0.0.1:1", "no-such-qc-dir")):
        (d / f"{name}.toml").write_text(
            f'validator_id = "v0"\nbft_key_file = "bft.key"\ndeployment = "{deployment}"\n'
            f'qc_source = "{qc}"\nlisten = "127.0.0.1:0"\n[appliance]\nlink = "/dev/null"\n'
            f'[pow]\nnodes = [{{ url = "{url}" }}]\n')
        out[f"{name}.toml"] = str(d / f"{name}.toml")
    (d / "badkey").write_text("not hex at all\n")
    (d / "badkey.toml").write_text(
        (d / "unreachable.toml").read_text().replace('"bft.key"', '"badkey"'))
    out["badkey.toml"] = str(d / "badkey.toml")
    cookie = f'cookie = "{d / "cookie"}"'
    (d / "badcookie.toml").write_text((d / "unreachable.toml").read_text().replace(
        'url = "http://127.0.0.1:1" }', f'url = "http://127.0.0.1:1", {cookie} }}'))
    out["badcookie.toml"] = str(d / "badcookie.toml")
    # A devnet datadir that already holds a devnet.
    used = d / "used"
    (used / "validators" / "v0").mkdir(parents=True)
    (used / "deployment.json").write_text("{}")
    (used / "validators" / "v0" / "seed.txt").write_text("words\n")
    out["used"] = str(used)
    running = d / "running"  # a PoW node runs there (its pid file)
    (running / "pow" / "regtest").mkdir(parents=True)
    (running / "pow" / "regtest" / "litecoind.pid").write_text("12345\n")
    out["running"] = str(running)
    return out


@pytest.fixture(scope="module")
def auth_port():
    """An HTTP server that refuses every RPC call with 401, as a node does a bad password."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def busy_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


# (argv with {placeholders}, exit status, text the one line must contain)
CASES: list[tuple[str, int, str]] = [
    # top level
    ("", 2, "required: COMMAND"),
    ("bogus", 2, "invalid choice: 'bogus'"),
    ("--nope devnet", 2, "--nope"),
    ("-x status --config {missing}", 2, "-x"),
    # devnet: numbers out of range, options that cannot work together, bad datadir
    ("devnet --validators 0", 2, "--validators: "),
    ("devnet --validators 21", 2, "--validators: 21"),
    ("devnet --validators four", 2, "--validators: 'four' is not"),
    ("devnet --epochs 0", 2, "--epochs"),
    ("devnet --interval 0", 2, "--interval: 0 is out of range"),
    ("devnet --rounds-per-epoch 1", 2, "--rounds-per-epoch: 1 is out of range"),
    ("devnet --handover-margin 30", 2, "--handover-margin: 30 must be less than"),
    ("devnet --handover-margin 0", 2, "--handover-margin: 0 is out of range"),
    ("devnet --fee-rate 1000000", 2, "--fee-rate: 1000000 is out of range"),
    ("devnet --fee-rate nan", 2, "--fee-rate: nan is out of range"),
    ("devnet --fee-rate abc", 2, "--fee-rate: 'abc' is not a number"),
    ("devnet --validators 16", 2, "--validators: 16"),
    ("devnet --signer trezor", 2, "--signer: invalid choice"),
    ("devnet --datadir {file}", 2, "--datadir {file}: is a file"),
    ("devnet --datadir {used}", 2, "--datadir {used}: already holds a devnet"),
    ("devnet --datadir {running}", 2, "--datadir {running}: is in use by a running PoW node"),
    ("devnet --datadir /proc/bft-anchor-x", 2, "--datadir /proc/bft-anchor-x: cannot be created"),
    # appliance sign
    ("appliance sign --config {app.toml}", 2, "required: --request"),
    ("appliance sign --config {app.toml} --request {missing}", 2, "--request {missing}: no such"),
    ("appliance sign --config {app.toml} --request {dir}", 2, "--request {dir}: is a directory"),
    ("appliance sign --config {app.toml} --request {empty.json}", 2, "{empty.json}: is empty"),
    ("appliance sign --config {app.toml} --request {binary.bin}", 2, "is not a text file"),
    # (a request whose content is wrong is a journaled refusal, exit 1: test_safety's)
    ("appliance sign --config {missing} --request {obj.json}", 2, "--config {missing}: no such"),
    ("appliance sign --config {app.toml} --request {obj.json}", 2, "deployment"),
    # appliance status / serve: config problems
    ("appliance status --config {missing}", 2, "--config {missing}: no such file"),
    ("appliance status --config {dir}", 2, "--config {dir}: is a directory"),
    ("appliance status --config {bad.toml}", 2, "{bad.toml}"),
    ("appliance status --config {app.toml}", 2, "deployment"),
    ("appliance serve --config {app.toml}", 2, "required: --link"),
    ("appliance serve --config {app.toml} --link /dev/nope --secret-file {short.secret}", 2,
     "--secret-file {short.secret}: holds 8 bytes"),
    ("appliance serve --config {app.toml} --link /dev/nope --secret-file {missing}", 2,
     "--secret-file {missing}: no such file"),
    ("appliance serve --config {app.toml} --link /dev/nope", 2, "deployment"),
    ("appliance serve --config {app.toml} --link /dev/nope --approval sometimes", 2,
     "--approval: invalid choice"),
    ("appliance serve --config {goodapp.toml} --link /dev/nope", 2, "--link /dev/nope: "),
    ("appliance serve --config {goodapp.toml} --link {dir}", 2, "--link {dir}: "),
    # appliance init
    ("appliance init {file}", 2, "directory {file}: is a file"),
    ("appliance init /proc/bft-anchor-x/y", 2, "directory /proc/bft-anchor-x/y"),
    ("appliance init {dir} --max-fee-sat -5", 2, "--max-fee-sat: -5 is out of range"),
    ("appliance init {dir} --max-fee-rate x", 2, "--max-fee-rate: 'x' is not a number"),
    # appliance control socket
    ("appliance pending --control {missing}", 2, "--control {missing}: no such socket"),
    ("appliance pending --control {obj.json}", 2, "--control {obj.json}: is not a socket"),
    ("appliance pending --control {dead.sock}", 2, "--control {dead.sock}: nobody is listening"),
    ("appliance approve --control {dead.sock}", 2, "required: id"),
    ("appliance mode --control {dead.sock} sometimes", 2, "invalid choice: 'sometimes'"),
    ("appliance history --control {dead.sock} --limit 0", 2, "--limit: 0 is out of range"),
    ("appliance history --control {dead.sock}", 2, "--control {dead.sock}: nobody"),
    # emulator
    ("emulator jade --port 99999", 2, "--port: 99999 is out of range"),
    ("emulator jade --port http", 2, "--port: 'http' is not an integer"),
    ("emulator jade --port {busy_port} --host 127.0.0.1", 2,
     "--host/--port 127.0.0.1:{busy_port}: Address already in use"),
    ("emulator jade --port 0 --mnemonic-file {missing}", 2, "--mnemonic-file {missing}: no such"),
    ("emulator jade --port 0 --mnemonic-file {seed.txt}", 2,
     "--mnemonic-file {seed.txt}: is empty"),
    ("emulator --port 0 --state {bad.json}", 2, "--state {bad.json}"),
    # device
    ("device check --epoch {missing}", 2, "--epoch {missing}: no such file"),
    ("device check --epoch {obj.json}", 2, "--epoch {obj.json}: not a valid epoch record"),
    ("device check --epoch {dir}", 2, "--epoch {dir}: is a directory"),
    ("device frobnicate", 2, "invalid choice: 'frobnicate'"),
    # udev
    ("udev", 2, "required: COMMAND"),
    ("udev install --dest", 2, "--dest: expected one argument"),
    # node / status
    ("node", 2, "--config is required"),
    ("node --config {missing}", 2, "{missing}"),
    ("node --config {bad.toml}", 2, "{bad.toml} is not valid TOML"),
    ("status --config {bad.toml}", 2, "{bad.toml} is not valid TOML"),
    ("status --config {dir}", 2, "{dir}"),
    ("status --config {missing} --last 0", 2, "--last: 0 is out of range"),
    ("status --config {unreachable.toml}", 2, "[pow] nodes: none answered"),
    ("status --config {unauthorised.toml}", 2, "[pow] nodes: none answered"),
    ("status --config {badcookie.toml}", 2, "is not USER:PASSWORD"),
    ("node --config {badkey.toml}", 2, "bft_key_file {dir}/badkey: must hold the BFT secret"),
    ("status --config {noqc.toml}", 2, "no-such-qc-dir (from {noqc.toml}): no epochs/"),
    # wrong chain, unreachable device
    ("appliance status --config {wrongchain.toml}", 2, "dogecoin-main"),
    ("appliance status --config {nodevice.toml}", 2,
     "--config {nodevice.toml}: signer: jade ? at tcp:127.0.0.1:1: cannot connect"),
    ("appliance sign --config {nodevice.toml} --request {missing}", 2,
     "--request {missing}: no such file"),
    ("appliance serve --config {nodevice.toml} --link /dev/null", 2, "cannot connect"),
    # tui
    ("tui", 2, "required: --config"),
    ("tui --config {missing}", 2, "{missing}"),
    ("tui --config {app.toml} --poll 0", 2, "--poll: 0 is out of range"),
    ("tui --config {app.toml} --control x.sock --link /dev/x", 2, "--link and --approval"),
]


def _fill(text: str, files: dict[str, str], port: int) -> str:
    for key, value in files.items():
        text = text.replace("{" + key + "}", value)
    return text.replace("{busy_port}", str(port))


@pytest.fixture(scope="module", autouse=True)
def _auth_port_in_configs(files, auth_port) -> None:
    path = Path(files["unauthorised.toml"])
    path.write_text(path.read_text().replace("{auth_port}", str(auth_port)))


@pytest.mark.parametrize("template,status,needle", CASES, ids=[c[0] or "(none)" for c in CASES])
def test_bad_input_is_one_line_naming_it(template, status, needle, files, busy_port, capsys):
    argv = [_fill(w, files, busy_port) for w in template.split()]
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bft-anchor"), err
    assert _fill(needle, files, busy_port) in lines[0], err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(files, capsys):
    assert main(["--debug", "appliance", "status", "--config", files["app.toml"]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("bft-anchor appliance")


def test_a_good_config_still_works(files, capsys):
    assert main(["appliance", "status", "--config", files["goodapp.toml"]]) == 0
    assert '"journal_head"' in capsys.readouterr().out


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bft-anchor {version('bft-anchor')}"


def test_emulator_takes_the_readmes_model_word(capsys):
    assert main(["emulator", "jade", "--help"]) == 0
    assert "usage: bft-anchor emulator jade" in capsys.readouterr().out


def test_init_never_overwrites_a_seed(tmp_path: Path, capsys):
    assert main(["appliance", "init", str(tmp_path)]) == 0
    seed = (tmp_path / "seed.txt").read_text()
    assert main(["appliance", "init", str(tmp_path)]) == 2
    assert "exists (--force" in capsys.readouterr().err
    assert main(["appliance", "init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "seed.txt").read_text() == seed
