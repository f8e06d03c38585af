"""examples/gpt-classifier.service: a valid unit whose ExecStart, run for real (with a tiny model, a
free port and a key file in place of the installed paths), serves and is ready, and stops cleanly
on the SIGTERM that systemd sends."""

from __future__ import annotations

import configparser
import shlex
import signal
import socket
import subprocess
import sys
import time

from helpers import ROOT, cli_env
from serve_helpers import train_tiny_checkpoint
from test_serve_production import call

UNIT = ROOT / "examples" / "gpt-classifier.service"
INSTALLED_MODEL = "/var/lib/gpt-classifier/model.ckpt"


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(UNIT.read_text())
    return unit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_unit_names_what_systemd_needs():
    unit = read_unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    command = shlex.split(service["ExecStart"])
    assert command[0].startswith("/") and command[1:3] == ["serve", INSTALLED_MODEL]
    graceful = float(command[command.index("--graceful-timeout") + 1])
    assert graceful < float(service["TimeoutStopSec"])  # systemd must not SIGKILL a drain
    assert service["LoadCredential"].startswith("api-key:")


def test_the_units_command_serves_and_stops_cleanly(sms_split_dir, tmp_path):
    checkpoint = train_tiny_checkpoint(sms_split_dir, tmp_path)
    (tmp_path / "api-key").write_text("unit-key\n")
    port = free_port()
    command = shlex.split(
        read_unit()["Service"]["ExecStart"].replace("${CREDENTIALS_DIRECTORY}", str(tmp_path))
    )
    command = [sys.executable, "-m", "gpt_classifier.cli.main", *command[1:]]  # the installed entry point
    command[command.index(INSTALLED_MODEL)] = str(checkpoint)
    command[command.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _, body = call(port, "GET", "/ready", key=None)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert (status, body) == (200, {"status": "ready"})
        assert call(port, "GET", "/stats", key=None)[0] == 401
        assert call(port, "GET", "/stats", key="unit-key")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
