"""Arrow Flight against the real binary through pyarrow.flight: DoExchange,
bad streams, and DoPut / `POST /embed?forward=true` reaching a Flight sink
that runs in this process, also across a sink restart and a full buffer."""

import json

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
