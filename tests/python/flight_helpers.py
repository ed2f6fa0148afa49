"""Helpers of the Arrow Flight tests: fletcher with its Flight port, a
recording Flight sink in the test process, and DoExchange/DoPut calls
through pyarrow.flight."""

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from conftest import Server, free_port

FLIGHT_STARTUP_SECONDS = 30


class FlightServer(Server):
    """`fletcher serve` with a Flight port; `.flight_url` and `.client()`."""

    def __init__(self, *extra_args):
        self.flight_port = free_port()
        self.flight_url = f"grpc://127.0.0.1:{self.flight_port}"
        super().__init__("--flight-port", str(self.flight_port), *extra_args)
        self._wait_flight()

    def client(self):
        return flight.FlightClient(self.flight_url)

    def _wait_flight(self):
        deadline = time.monotonic() + FLIGHT_STARTUP_SECONDS
        while True:
            try:
                with self.client() as client:
                    health = action(client, "health")
                if health["status"] == "ok":
                    return
            except flight.FlightUnavailableError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Flight port not up:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)


def action(client, name):
    """The JSON body of the one answer of DoAction `name`."""
    results = list(client.do_action(flight.Action(name, b"")))
    assert len(results) == 1
    return json.loads(results[0].body.to_pybytes())


def id_text_batches(first_id, texts, batch_rows):
    """`texts` as record batches of `id` (int64, from `first_id`) and `text`
    (utf8), at most `batch_rows` rows each."""
    batches = []
    for start in range(0, len(texts), batch_rows):
        chunk = texts[start:start + batch_rows]
        ids = pa.array(range(first_id + start, first_id + start + len(chunk)), pa.int64())
        batches.append(pa.record_batch([ids, pa.array(chunk, pa.string())], names=["id", "text"]))
    return batches


def exchange(client, batches, descriptor=None, schema=None):
    """DoExchange of `batches`; returns the answer's record batches.

    The batches are written from a second thread while this one reads, so a
    large answer cannot stall the call."""
    descriptor = descriptor or flight.FlightDescriptor.for_command(b"")
    schema = schema or batches[0].schema
    writer, reader = client.do_exchange(descriptor)
    failure = []

    def write():
        try:
            writer.begin(schema)
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
        except Exception as e:  # noqa: BLE001 - the reader reports the call's error
            failure.append(e)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        answer = []
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            answer.append(chunk.data)
    finally:
        thread.join()
        writer.close()
    if failure:
        raise failure[0]
    return answer


def put(client, path, batches, schema=None):
    """DoPut of `batches` with the descriptor path `path`; returns the JSON
    of the server's PutResult."""
    descriptor = flight.FlightDescriptor.for_path(*path)
    writer, metadata = client.do_put(descriptor, schema or batches[0].schema)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    answer = metadata.read()
    writer.close()
    return json.loads(answer.to_pybytes()) if answer is not None else None


def vectors(batches):
    """The `embedding` column of `batches` as one 2-D numpy array."""
    rows = [b.column("embedding").flatten().to_numpy(zero_copy_only=False) for b in batches]
    dims = [b.schema.field("embedding").type.list_size for b in batches]
    return np.concatenate([r.reshape(-1, d) for r, d in zip(rows, dims)])


def ids(batches):
    return [i for b in batches for i in b.column("id").to_pylist()]


class RecordingSink(flight.FlightServerBase):
    """A Flight server that records every DoPut: its descriptor path and
    batches."""

    def __init__(self, port):
        super().__init__(f"grpc://127.0.0.1:{port}")
        self.lock = threading.Lock()
        self.puts = []  # (path, [RecordBatch])

    def do_put(self, context, descriptor, reader, writer):
        path = [p.decode() if isinstance(p, bytes) else p for p in descriptor.path]
        batches = []
        for chunk in reader:
            batches.append(chunk.data)
        with self.lock:
            self.puts.append((path, batches))

    def rows(self):
        """(path, id or None, text) of every row received, in order."""
        with self.lock:
            puts = list(self.puts)
        out = []
        for path, batches in puts:
            for b in batches:
                texts = b.column("text").to_pylist()
                row_ids = b.column("id").to_pylist() if "id" in b.schema.names else [None] * len(texts)
                out.extend((tuple(path), i, t) for i, t in zip(row_ids, texts))
        return out

    def batches(self):
        with self.lock:
            return [(path, b) for path, bs in self.puts for b in bs]


def start_sink(port=None):
    """A RecordingSink serving in a thread on `port` (a free one when None)."""
    sink = RecordingSink(port or free_port())
    thread = threading.Thread(target=sink.serve, daemon=True)
    thread.start()
    return sink


def stop_sink(sink):
    sink.shutdown()
    sink.wait()


def wait_until(what, done, timeout=20):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)
