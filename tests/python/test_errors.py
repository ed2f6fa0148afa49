"""Every class of bad request: its status, a JSON error body, and a server
that still answers good requests afterwards."""

import numpy as np
import openai
import pytest
import requests

from conftest import embed
from test_clients import openai_client

LONG = "word " * 600


def post(server, path, body=None, json=None, headers=None):
    return requests.post(server.url + path, data=body, json=json, headers=headers, timeout=60)


def assert_native(r, status, error_type, *facts):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error_type"] == error_type, body
    for fact in facts:
        assert fact in body["error"], (fact, body)


CASES = [
    ("malformed json", dict(body=b'{"inputs": ', headers={"Content-Type": "application/json"}),
     400, "Validation", ["malformed JSON"]),
    ("invalid utf-8", dict(body=b'{"inputs": "\xff\xfe"}', headers={"Content-Type": "application/json"}),
     400, "Validation", ["unicode"]),
    ("wrong type", dict(json={"inputs": 5}), 422, "Validation", ["a number"]),
    ("wrong option type", dict(json={"inputs": "a", "normalize": "yes"}), 422, "Validation", ["`normalize`"]),
    ("missing field", dict(json={"text": "a"}), 422, "Validation", ["missing field `inputs`"]),
    ("empty list", dict(json={"inputs": []}), 422, "Validation", ["cannot be empty"]),
    ("empty string", dict(json={"inputs": ""}), 422, "Validation", ["text 0", "empty"]),
    ("too many texts", dict(json={"inputs": ["x"] * 513}), 422, "Validation", ["513", "512"]),
    ("too long", dict(json={"inputs": ["ok", LONG], "truncate": False}), 422, "Validation",
     ["text 1 has", "limit of 256"]),
    ("unknown prompt", dict(json={"inputs": "a", "prompt_name": "query"}), 422, "Validation", ["query"]),
    ("bad dimensions", dict(json={"inputs": "a", "dimensions": 1000}), 422, "Validation", ["1000", "384"]),
    ("bad direction", dict(json={"inputs": "a", "truncation_direction": "up"}), 422, "Validation", ["up"]),
    ("payload too large", dict(json={"inputs": ["y" * 1000] * 2100}), 413, "PayloadTooLarge", ["2000000"]),
    ("bad arrow", dict(body=b"nope", headers={"Content-Type": "application/vnd.apache.arrow.stream"}),
     400, "Validation", ["Arrow"]),
]


@pytest.mark.parametrize("name,request_args,status,error_type,facts", CASES, ids=[c[0] for c in CASES])
def test_bad_input_classes(server, name, request_args, status, error_type, facts):
    assert_native(post(server, "/embed", **request_args), status, error_type, *facts)
    assert embed(server, "still working").shape == (1, 384)


def test_unknown_route_and_method(server):
    assert_native(requests.get(server.url + "/nope"), 404, "NotFound", "/nope")
    assert_native(requests.get(server.url + "/embed"), 405, "MethodNotAllowed")


def test_tokenize_errors_and_shape(server):
    r = post(server, "/tokenize", json={"inputs": "hello world"})
    assert r.status_code == 200
    assert [t["id"] for t in r.json()[0]] == [101, 7592, 2088, 102]
    r = post(server, "/tokenize", json={"inputs": "hello world", "add_special_tokens": False})
    assert [t["text"] for t in r.json()[0]] == ["hello", "world"]
    assert_native(post(server, "/tokenize", json={"inputs": []}), 422, "Validation")


def assert_openai(r, status, kind, param, fact):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind
    assert error["param"] == param
    assert fact in error["message"]


def test_openai_error_shapes(server):
    url = "/v1/embeddings"
    assert_openai(post(server, url, json={"input": [[101, 102]]}), 422, "invalid_request_error", "input", "token ids")
    assert_openai(post(server, url, json={"input": []}), 422, "invalid_request_error", "input", "empty")
    assert_openai(post(server, url, json={"input": "a", "encoding_format": "int8"}), 422,
                  "invalid_request_error", "encoding_format", "int8")
    assert_openai(post(server, url, body=b"{", headers={"Content-Type": "application/json"}), 400,
                  "invalid_request_error", None, "malformed JSON")
    assert_openai(post(server, url, json={"input": ["x"] * 513}), 422, "invalid_request_error", None, "513")
    assert_openai(post(server, url, json={"input": ["z" * 1000] * 2100}), 413,
                  "invalid_request_error", None, "payload limit")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        openai_client(server).embeddings.create(model="m", input=[[1, 2, 3]])
    assert "token ids" in str(caught.value)
    good = openai_client(server).embeddings.create(model="m", input="fine")
    assert np.asarray(good.data[0].embedding).shape == (384,)
