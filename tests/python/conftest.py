"""Fixtures that run `fletcher serve` (the release binary) on free ports.

FLETCHER_BIN names the binary (default target/release/fletcher); it is run
as `$FLETCHER_BIN serve --model DIR ...`. FLETCHER_TEST_MODEL names the
model directory (default: models/all-MiniLM-L6-v2 at the repository root,
else the shared copy).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


def binary():
    return os.environ.get("FLETCHER_BIN", str(ROOT / "target" / "release" / "fletcher"))


def model_dir():
    if os.environ.get("FLETCHER_TEST_MODEL"):
        return os.environ["FLETCHER_TEST_MODEL"]
    for candidate in (
        ROOT / "models" / "all-MiniLM-L6-v2",
        ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2",
        pathlib.Path("/work/shared/models/all-MiniLM-L6-v2"),
    ):
        if (candidate / "model.safetensors").is_file():
            return str(candidate)
    raise RuntimeError("all-MiniLM-L6-v2 not found: run scripts/fetch-model.sh first")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `fletcher serve` process, healthy once constructed."""

    def __init__(self, *extra_args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fletcher-serve-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if k != "FLETCHER_API_KEY"}
        env.setdefault("RUST_LOG", "info")
        cmd = [
            binary(), "serve",
            "--model", model_dir(),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--threads", "2",
            *extra_args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy()

    def _wait_healthy(self):
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"server not healthy after {STARTUP_SECONDS}s:\n{self.log_text()}")

    def log_text(self):
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def rss_bytes(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout=60):
        """Sends SIGTERM and returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop_and_check(self):
        code = self.terminate()
        assert code == 0, f"exit code {code}:\n{self.log_text()[-4000:]}"


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop_and_check()


def embed(server, texts, **options):
    """POST /embed; returns the vectors as a float32 array."""
    r = requests.post(server.url + "/embed", json={"inputs": texts, **options}, timeout=120)
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def references(n):
    """The first n (text, vector) pairs of tests/data/minilm_reference.jsonl."""
    path = ROOT / "tests" / "data" / "minilm_reference.jsonl"
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                out.append((record["text"], np.asarray(record["embedding"], dtype=np.float32)))
            if len(out) == n:
                break
    return out


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
