"""Helpers of the embedding-cache integration tests: metrics read from
GET /metrics, /embed with a dataset, a Flight DoExchange call, and a
redis-server process that can be stopped and started again on its port."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
import requests

from conftest import free_port

CACHE_HITS = "fletcher_cache_hits_total"
CACHE_MISSES = "fletcher_cache_misses_total"
CACHE_BYTES = "fletcher_cache_bytes"
CACHE_ENTRIES = "fletcher_cache_entries"
REDIS_ERRORS = "fletcher_cache_redis_errors_total"
DEVICE_SEQUENCES = "fletcher_gpu_sequences_total"

WATCHED = (CACHE_HITS, CACHE_MISSES, CACHE_BYTES, CACHE_ENTRIES, REDIS_ERRORS, DEVICE_SEQUENCES)


def metrics(server):
    """The watched metrics of `server`, each summed over its labels (for
    fletcher_gpu_sequences_total: over every device)."""
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out = {name: 0.0 for name in WATCHED}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, value = line.rpartition(" ")
        name = name_and_labels.split("{", 1)[0]
        if name in out:
            out[name] += float(value)
    return out


class Delta:
    """Changes of the watched metrics of a server across a `with` block."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        self.before = metrics(self.server)
        return self

    def __exit__(self, *exc):
        self.after = metrics(self.server)

    def __getitem__(self, name):
        return self.after[name] - self.before[name]

    def __repr__(self):
        return "Delta(" + ", ".join(f"{n}={self[n]:g}" for n in WATCHED) + ")"


def unique_texts(tag, n):
    """n texts seen by no other test or run."""
    salt = uuid.uuid4().hex[:8]
    return [f"{tag} {salt} sentence number {i} about caching" for i in range(n)]


def embed(server, texts, dataset=None, timeout=120, **options):
    """POST /embed (with `?dataset=` when given); the vectors as float32."""
    params = {"dataset": dataset} if dataset is not None else None
    r = requests.post(
        server.url + "/embed", params=params, json={"inputs": texts, **options}, timeout=timeout
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def flight_embed(port, texts, **cmd):
    """Flight DoExchange of a `text` column with `cmd` as the descriptor's
    JSON options; the embedding column as float32."""
    import pyarrow.flight as flight

    client = flight.connect(f"grpc://127.0.0.1:{port}")
    try:
        descriptor = flight.FlightDescriptor.for_command(json.dumps(cmd).encode())
        writer, reader = client.do_exchange(descriptor)
        table = pa.table({"text": pa.array(texts, type=pa.string())})
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        result = reader.read_all()
        writer.close()
    finally:
        client.close()
    assert result.column("text").to_pylist() == texts
    return np.asarray(result.column("embedding").to_pylist(), dtype=np.float32)


def redis_binary():
    """redis-server's path, or None."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def require_redis():
    """redis-server's path; skips the test when there is none, or fails it
    when FLETCHER_REQUIRE_REDIS=1."""
    path = redis_binary()
    if path is None:
        reason = "redis-server not installed (scripts/test-deps.sh installs it)"
        if os.environ.get("FLETCHER_REQUIRE_REDIS") == "1":
            pytest.fail(reason + "; FLETCHER_REQUIRE_REDIS=1 forbids skipping")
        pytest.skip(reason + "; set FLETCHER_REQUIRE_REDIS=1 to fail instead")
    return path


def _redis_command(port, *args, timeout=1.0):
    """One command in RESP; the raw reply bytes."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        a = str(a).encode()
        payload += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(4096)


class RedisServer:
    """A throw-away redis-server on a free port, without persistence."""

    def __init__(self, binary):
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fletcher-redis-", suffix=".log", delete=False)
        self.proc = None
        self.start()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if _redis_command(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def dbsize(self):
        reply = _redis_command(self.port, "DBSIZE")
        assert reply.startswith(b":"), reply
        return int(reply[1:].strip())
