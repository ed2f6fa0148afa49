"""Named prompts from config_sentence_transformers.json: `prompt_name`
puts the named prompt before each text, a model's `default_prompt_name`
applies when a request names none, and an unknown name is a 422 that lists
the model's prompts."""

import json
import os
import pathlib

import numpy as np
import pytest
import requests

from conftest import Server, embed, model_dir

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    """A copy of the model (files linked) whose config defines prompts and
    makes `passage` the default."""
    src = pathlib.Path(model_dir())
    dst = tmp_path_factory.mktemp("prompted-model")
    for entry in src.iterdir():
        if entry.name != "config_sentence_transformers.json":
            os.symlink(entry.resolve(), dst / entry.name)
    (dst / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "passage"})
    )
    # Server() serves the model that FLETCHER_TEST_MODEL names.
    os.environ["FLETCHER_TEST_MODEL"], saved = str(dst), os.environ.get("FLETCHER_TEST_MODEL")
    try:
        s = Server("--cache-capacity", "0")
    finally:
        if saved is None:
            del os.environ["FLETCHER_TEST_MODEL"]
        else:
            os.environ["FLETCHER_TEST_MODEL"] = saved
    yield s
    s.stop_and_check()


TEXTS = ["how do I reset my password", "Fletcher turns texts into vectors"]


def test_prompt_name_prefixes_the_named_prompt(prompted, server):
    got = embed(prompted, TEXTS, prompt_name="query")
    want = embed(server, ["query: " + t for t in TEXTS])
    assert np.abs(got - want).max() <= 1e-6
    plain = embed(server, TEXTS)
    assert np.abs(got - plain).max() > 1e-3


def test_default_prompt_applies_when_none_is_named(prompted, server):
    got = embed(prompted, TEXTS)
    want = embed(server, ["passage: " + t for t in TEXTS])
    assert np.abs(got - want).max() <= 1e-6


def test_unknown_prompt_is_422_listing_the_prompts(prompted):
    r = requests.post(prompted.url + "/embed", json={"inputs": "a", "prompt_name": "nope"}, timeout=30)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_type"] == "Validation"
    assert "nope" in body["error"] and "passage, query" in body["error"]


def test_tokenize_shows_the_prompt_tokens(prompted):
    r = requests.post(prompted.url + "/tokenize",
                      json={"inputs": "hello", "prompt_name": "query"}, timeout=30)
    assert r.status_code == 200, r.text
    words = [t["text"] for t in r.json()[0]]
    assert words[:4] == ["[CLS]", "query", ":", "hello"], words
