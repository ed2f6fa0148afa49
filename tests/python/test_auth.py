"""`--api-key`: inference routes need the bearer key; /health and /metrics
stay open."""

import openai
import pytest
import requests

from conftest import Server
from test_clients import openai_client

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def keyed():
    s = Server("--api-key", KEY)
    yield s
    s.stop_and_check()


@pytest.mark.parametrize("path,body", [("/embed", {"inputs": "hi"}), ("/", {"inputs": "hi"}),
                                        ("/tokenize", {"inputs": "hi"})])
def test_native_routes_need_the_key(keyed, path, body):
    url = keyed.url + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        r = requests.post(url, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error_type"] == "Unauthorized"
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text


def test_info_needs_the_key_health_and_metrics_do_not(keyed):
    assert requests.get(keyed.url + "/info").status_code == 401
    assert requests.get(keyed.url + "/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert requests.get(keyed.url + "/health").status_code == 200
    assert requests.get(keyed.url + "/metrics").status_code == 200


def test_openai_client_with_and_without_the_key(keyed):
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(keyed, key="wrong").embeddings.create(model="m", input="hi")
    assert caught.value.body["code"] == "invalid_api_key"
    response = openai_client(keyed, key=KEY).embeddings.create(model="m", input="hi")
    assert len(response.data[0].embedding) == 384
