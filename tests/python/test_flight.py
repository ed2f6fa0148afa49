"""Arrow Flight against the real binary through pyarrow.flight: DoExchange,
bad streams, and DoPut / `POST /embed?forward=true` reaching a Flight sink
that runs in this process, also across a sink restart and a full buffer."""

import json
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import requests

from conftest import embed, free_port, references
from flight_helpers import (
    FlightServer,
    exchange,
    id_text_batches,
    ids,
    put,
    start_sink,
    stop_sink,
    vectors,
    wait_until,
)

TEXTS = [text for text, _ in references(20)] + [
    f"sentence {i} about {topic}"
    for i, topic in enumerate(["arrow", "flight", "vectors", "rust", "search"] * 4)
]


@pytest.fixture(scope="module")
def flight_server():
    s = FlightServer()
    yield s
    s.stop_and_check()


def test_exchange_round_trip_matches_http_embed(flight_server):
    batches = id_text_batches(1000, TEXTS, 15)
    empty = batches[0].slice(0, 0)
    batches = [batches[0], empty, *batches[1:]]
    with flight_server.client() as client:
        answer = exchange(client, batches)
    assert [b.num_rows for b in answer] == [15, 0, 15, 10]
    assert answer[0].schema.names == ["id", "text", "embedding"]
    embedding_type = answer[0].schema.field("embedding").type
    assert embedding_type == pa.list_(pa.field("item", pa.float32(), nullable=False), 384)
    assert ids(answer) == list(range(1000, 1000 + len(TEXTS)))
    assert [t for b in answer for t in b.column("text").to_pylist()] == TEXTS
    got = vectors(answer)
    expected = embed(flight_server, TEXTS)
    assert got.shape == expected.shape == (len(TEXTS), 384)
    assert float(np.max(np.abs(got - expected))) <= 1e-6


def test_exchange_f16_through_the_cmd_option(flight_server):
    descriptor = flight.FlightDescriptor.for_command(json.dumps({"format": "f16"}))
    with flight_server.client() as client:
        answer = exchange(client, id_text_batches(0, TEXTS[:6], 4), descriptor)
    assert [b.num_rows for b in answer] == [4, 2]
    assert answer[0].schema.field("embedding").type.value_type == pa.float16()
    got = vectors(answer)
    assert got.dtype == np.float16
    expected = embed(flight_server, TEXTS[:6])
    diff = np.abs(got.astype(np.float32) - expected)
    assert float(diff.max()) <= 1e-3
    assert float(diff.max()) > 0  # really rounded to half precision


@pytest.mark.parametrize(
    "batch, message",
    [
        (
            pa.record_batch([pa.array(["x"])], names=["body"]),
            "the stream has no `text` column (columns: body)",
        ),
        (
            pa.record_batch([pa.array([1, 2], pa.int64())], names=["text"]),
            "column `text` is Int64, expected Utf8",
        ),
    ],
    ids=["no-text-column", "int64-text"],
)
def test_bad_streams_are_invalid_arguments(flight_server, batch, message):
    with flight_server.client() as client:
        with pytest.raises(pa.ArrowInvalid) as err:
            exchange(client, [batch])
    text = str(err.value)
    assert "INVALID_ARGUMENT" in text, text
    assert message in text, text


def sink_args(port, *extra):
    return ("--sink", f"grpc://127.0.0.1:{port}", "--dataset", "ds", *extra)


def forward(server, texts, dataset=None):
    params = {"forward": "true"}
    if dataset:
        params["dataset"] = dataset
    return requests.post(server.url + "/embed", params=params, json={"inputs": texts}, timeout=60)


def test_put_and_forwarded_rows_reach_the_sink():
    sink = start_sink()
    server = FlightServer(*sink_args(sink.port))
    try:
        with server.client() as client:
            answer = put(client, ["ds2"], id_text_batches(0, TEXTS[:20], 8))
        assert answer == {"rows": 20}
        r = forward(server, ["forwarded one", "forwarded two"])
        assert r.status_code == 200, r.text
        http_vectors = np.asarray(r.json(), dtype=np.float32)
        r = forward(server, ["named dataset"], dataset="other")
        assert r.status_code == 200, r.text
        wait_until("23 rows reach the sink", lambda: len(sink.rows()) >= 23)
        rows = sink.rows()
        assert len(rows) == 23
        put_rows = [(i, t) for path, i, t in rows if path == ("ds2",)]
        assert put_rows == list(zip(range(20), TEXTS[:20]))
        assert [t for path, _, t in rows if path == ("ds",)] == ["forwarded one", "forwarded two"]
        assert [t for path, _, t in rows if path == ("other",)] == ["named dataset"]
        by_path = {}
        for path, batch in sink.batches():
            by_path.setdefault(path[0], []).append(batch)
        assert by_path["ds2"][0].schema.names == ["id", "text", "embedding"]
        expected = embed(server, TEXTS[:20])
        assert float(np.max(np.abs(vectors(by_path["ds2"]) - expected))) <= 1e-6
        assert float(np.max(np.abs(vectors(by_path["ds"]) - http_vectors))) <= 1e-6
    finally:
        server.stop_and_check()
        stop_sink(sink)


def test_rows_acknowledged_while_the_sink_is_down_arrive_after_restart():
    sink = start_sink()
    port = sink.port
    server = FlightServer(*sink_args(port))
    try:
        with server.client() as client:
            assert put(client, ["ds2"], id_text_batches(0, TEXTS[:5], 5)) == {"rows": 5}
            wait_until("the first rows arrive", lambda: len(sink.rows()) == 5)
            stop_sink(sink)
            acknowledged = {}
            for first in (100, 200):
                batches = id_text_batches(first, TEXTS[:10], 4)
                assert put(client, ["ds2"], batches) == {"rows": 10}
                acknowledged.update(zip(range(first, first + 10), TEXTS[:10]))
        r = forward(server, ["while the sink was down"])
        assert r.status_code == 200, r.text

        sink = start_sink(port)

        def arrived():
            got = {i for path, i, _ in sink.rows() if path == ("ds2",)}
            return got >= set(acknowledged) and any(path == ("ds",) for path, _, _ in sink.rows())

        wait_until("every acknowledged row arrives", arrived, timeout=30)
        for path, i, text in sink.rows():
            if path == ("ds2",):
                # A retried call may repeat rows, never with another id.
                assert acknowledged.get(i) == text, (i, text)
            else:
                assert (path, i, text) == (("ds",), None, "while the sink was down")
    finally:
        server.stop_and_check()
        stop_sink(sink)


def test_rows_acknowledged_while_the_sink_restarts_mid_stream_all_arrive():
    """A thread keeps putting rows with an `id` column and another keeps
    forwarding texts through `POST /embed?forward=true` while the sink is
    stopped and, 1.5 s later, started again on its port: every row
    acknowledged to a client (before, during and after the outage) reaches
    one of the two sink instances, DoPut rows by id with their text,
    forwarded rows by their (unique) text, and a repeated row carries the
    same id, text and vector."""
    sinks = [start_sink()]
    port = sinks[0].port
    server = FlightServer(*sink_args(port))
    salt = uuid.uuid4().hex[:8]
    stop = threading.Event()
    lock = threading.Lock()
    sent_puts = {}  # id -> text, of every row sent by DoPut
    acked_puts = {}  # id -> time acknowledged
    sent_forwards = set()
    acked_forwards = {}  # text -> time acknowledged
    failures = []
    sink_up = [True]  # whether sinks[-1] is serving

    def keep_putting():
        first = 0
        try:
            with server.client() as client:
                while not stop.is_set():
                    texts = [f"put {salt} row {first + k}" for k in range(8)]
                    with lock:
                        sent_puts.update(zip(range(first, first + 8), texts))
                    answer = put(client, ["ds2"], id_text_batches(first, texts, 4))
                    assert answer == {"rows": 8}, answer
                    now = time.monotonic()
                    with lock:
                        acked_puts.update((first + k, now) for k in range(8))
                    first += 8
                    time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test's thread
            failures.append(("put", repr(e)))

    def keep_forwarding():
        n = 0
        try:
            while not stop.is_set():
                texts = [f"forward {salt} text {n}", f"forward {salt} text {n + 1}"]
                with lock:
                    sent_forwards.update(texts)
                r = forward(server, texts)
                assert r.status_code == 200, r.text
                now = time.monotonic()
                with lock:
                    acked_forwards.update((t, now) for t in texts)
                n += 2
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test's thread
            failures.append(("forward", repr(e)))

    def all_rows():
        return [row for sink in sinks for row in sink.rows()]

    threads = [threading.Thread(target=keep_putting), threading.Thread(target=keep_forwarding)]
    try:
        for t in threads:
            t.start()
        wait_until("rows of both kinds reach the first sink",
                   lambda: {("ds2",), ("ds",)} <= {path for path, _, _ in sinks[0].rows()})
        stop_sink(sinks[0])
        sink_up[0] = False
        down_at = time.monotonic()
        time.sleep(1.5)
        up_at = time.monotonic()
        sinks.append(start_sink(port))
        sink_up[0] = True
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        assert not any(t.is_alive() for t in threads)

        # The traffic really went on through the outage and after it.
        assert any(down_at < at < up_at for at in acked_puts.values()), "no DoPut acknowledged while down"
        assert any(down_at < at < up_at for at in acked_forwards.values()), "no forward acknowledged while down"
        assert any(at > up_at for at in acked_puts.values())
        assert any(at > up_at for at in acked_forwards.values())

        def everything_arrived():
            rows = all_rows()
            put_ids = {i for path, i, _ in rows if path == ("ds2",)}
            forwarded = {t for path, _, t in rows if path == ("ds",)}
            return put_ids >= set(acked_puts) and forwarded >= set(acked_forwards)

        wait_until("every acknowledged row reaches a sink", everything_arrived, timeout=30)
        for path, i, text in all_rows():
            if path == ("ds2",):
                # A retried call may repeat rows, never with another id.
                assert sent_puts.get(i) == text, (i, text)
            else:
                assert path == ("ds",) and i is None and text in sent_forwards, (path, i, text)
        seen = {}
        for path, batch in [(p, b) for sink in sinks for p, b in sink.batches()]:
            keys = batch.column("id").to_pylist() if path == ["ds2"] else batch.column("text").to_pylist()
            embeddings = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).reshape(-1, 384)
            for key, vector in zip(keys, embeddings):
                first = seen.setdefault((path[0], key), vector)
                np.testing.assert_array_equal(vector, first, err_msg=f"repeated row {path[0]} {key}")
        rows = all_rows()
        repeats = len(rows) - len({(path, i if path == ("ds2",) else t) for path, i, t in rows})
        print(f"{len(acked_puts)} put rows and {len(acked_forwards)} forwarded rows acknowledged, "
              f"{len(rows)} received by the sinks ({repeats} repeated), "
              f"{sum(1 for at in acked_puts.values() if down_at < at < up_at)} put rows while down")
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(timeout=60)
        server.stop_and_check()
        if sink_up[0]:
            stop_sink(sinks[-1])


def test_a_full_buffer_refuses_rows_and_drops_none():
    port = free_port()
    server = FlightServer(*sink_args(port, "--sink-buffer-rows", "8"))
    sink = None
    try:
        r = forward(server, ["kept one", "kept two", "kept three", "kept four", "kept five"])
        assert r.status_code == 200, r.text
        r = forward(server, ["one", "too", "many", "rows"])
        assert r.status_code == 429, r.text
        body = r.json()
        assert body["error_type"] == "SinkFull", body
        assert "room for 3 rows" in body["error"], body
        with server.client() as client:
            with pytest.raises(pa.ArrowException) as err:
                put(client, ["ds2"], id_text_batches(0, TEXTS[:4], 4))
        assert "RESOURCE_EXHAUSTED" in str(err.value), str(err.value)
        assert "0 rows of this call were accepted" in str(err.value), str(err.value)
        with server.client() as client:
            assert put(client, ["ds2"], id_text_batches(50, TEXTS[:3], 3)) == {"rows": 3}

        sink = start_sink(port)
        wait_until("the buffered rows arrive", lambda: len(sink.rows()) >= 8, timeout=30)
        rows = sink.rows()
        assert sorted(t for path, _, t in rows if path == ("ds",)) == sorted(
            ["kept one", "kept two", "kept three", "kept four", "kept five"]
        )
        assert [i for path, i, _ in rows if path == ("ds2",)] == [50, 51, 52]
        assert len(rows) == 8
    finally:
        server.stop_and_check()
        if sink is not None:
            stop_sink(sink)
