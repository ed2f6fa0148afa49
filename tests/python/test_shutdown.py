"""Requests that end early or late: SIGTERM while a request is in flight
(the request completes, the process exits 0), and a client that leaves
before its answer (the server drops the work)."""

import json
import socket
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server


def metric(server, name):
    text = requests.get(server.url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name}")


def inputs_in_flight(server):
    return metric(server, "fletcher_inputs_in_flight")


def test_sigterm_drains_requests_in_flight():
    server = Server()
    texts = [f"sentence number {i} about graceful shutdown of servers" for i in range(512)]
    result = {}

    def send():
        r = requests.post(server.url + "/embed", json={"inputs": texts}, timeout=120)
        result["status"] = r.status_code
        result["vectors"] = len(r.json())

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 10
    while inputs_in_flight(server) == 0:
        assert time.monotonic() < deadline, "request never got in flight"
        time.sleep(0.005)
    code = server.terminate()
    sender.join(timeout=60)
    assert result == {"status": 200, "vectors": 512}
    assert code == 0, server.log_text()[-4000:]
    assert "shutting down" in server.log_text()


def test_client_that_leaves_gets_its_work_dropped():
    server = Server("--max-batch-tokens", "512")
    texts = [f"text {i} from a client that will not wait for the answer at all" for i in range(512)]
    body = json.dumps({"inputs": texts}).encode()
    head = (f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(head + body)
        deadline = time.monotonic() + 10
        while metric(server, "fletcher_gpu_sequences_total") == 0:
            assert time.monotonic() < deadline, "no batch of the request ran"
            time.sleep(0.005)
    left = time.monotonic()
    while inputs_in_flight(server) > 0:
        assert time.monotonic() - left < 10, "work kept running after the client left"
        time.sleep(0.01)
    released = time.monotonic() - left
    encoded = metric(server, "fletcher_gpu_sequences_total")
    assert encoded < len(texts), f"all {encoded} texts were encoded for a client that left"
    assert "client went away" in server.log_text()
    server.stop_and_check()
    print(f"work released {released * 1e3:.0f} ms after the client left, {encoded:.0f} of 512 texts encoded")
