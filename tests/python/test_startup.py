"""Readiness: the port is open while the model loads, and every route
answers 503 with a JSON error until the model is loaded and warm; then
/health turns 200 and inference works."""

import subprocess
import time

import requests

from conftest import binary, free_port, model_dir


def test_health_is_503_until_the_model_is_loaded():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary(), "serve", "--model", model_dir(), "--host", "127.0.0.1",
         "--port", str(port), "--threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    seen = []
    loading_embed = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited during start-up"
            try:
                r = requests.get(url + "/health", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.002)
                continue
            seen.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error_type"] == "Unhealthy", r.text
                if loading_embed is None:
                    loading_embed = requests.post(url + "/embed", json={"inputs": "hi"}, timeout=2)
            if r.status_code == 200:
                break
        assert seen and seen[-1] == 200, seen
        # Loading the model takes far longer than one round trip, so the
        # port answered before the model was ready.
        assert seen[0] == 503, seen
        assert set(seen[:-1]) == {503}, seen
        # An inference route during loading was refused the same way, unless
        # loading finished in between.
        if loading_embed is not None and loading_embed.status_code != 200:
            assert loading_embed.status_code == 503
            assert "error" in loading_embed.json()
        r = requests.post(url + "/embed", json={"inputs": "hello there"}, timeout=30)
        assert r.status_code == 200 and len(r.json()[0]) == 384
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_model_that_cannot_load_exits_with_an_error(tmp_path):
    proc = subprocess.run(
        [binary(), "serve", "--model", str(tmp_path / "missing"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "missing" in proc.stderr + proc.stdout

