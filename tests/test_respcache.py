"""The optional response cache: deterministic requests answered from disk on repeat, in the
shape the repeat asks for; everything else never cached."""

from __future__ import annotations

import json

import pytest

from conftest import data_url, user

CHAT = "/v1/chat/completions"


@pytest.fixture
def cached(make_app, tmp_path):
    app = make_app(response_cache_dir=str(tmp_path / "responses"))
    return app.test_client(), app.extensions["vlserve"]


def ask(client, image_color=(200, 40, 90), **body):
    payload = {"messages": [user(("img", data_url(color=image_color)), "what is it?")],
               "max_tokens": 6, "temperature": 0, **body}
    return client.post(CHAT, json=payload)


def stream_text(r):
    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if e.get("choices")), events


def test_off_by_default(client):
    r = ask(client)
    assert r.status_code == 200 and "X-Cache" not in r.headers


def test_a_repeat_is_answered_from_disk_without_the_engine(cached):
    client, state = cached
    first = ask(client)
    assert first.headers["X-Cache"] == "miss"
    generated = state["worker"].stats["tokens_generated"]
    second = ask(client)
    assert second.headers["X-Cache"] == "hit"
    a, b = first.get_json(), second.get_json()
    assert b["choices"][0]["message"] == a["choices"][0]["message"]
    assert b["usage"] == a["usage"] and b["id"] != a["id"]
    assert state["worker"].stats["tokens_generated"] == generated   # the engine did nothing
    assert state["responses"].stats()["hits"] == 1


def test_a_kept_answer_replays_as_a_stream_too(cached):
    client, _ = cached
    answer = ask(client).get_json()["choices"][0]["message"]["content"]
    r = ask(client, stream=True, stream_options={"include_usage": True})
    text, events = stream_text(r)
    assert r.headers["X-Cache"] == "hit" and text == answer
    assert r.get_data(as_text=True).endswith("data: [DONE]\n\n")
    assert events[-1]["usage"]["completion_tokens"] == 6
    # and a streamed answer is kept for a plain repeat
    streamed, _ = stream_text(ask(client, stream=True, max_tokens=5))
    again = ask(client, max_tokens=5)
    assert again.headers["X-Cache"] == "hit"
    assert again.get_json()["choices"][0]["message"]["content"] == streamed


def test_what_changes_the_answer_changes_the_key(cached):
    client, _ = cached
    ask(client)
    assert ask(client, image_color=(10, 200, 10)).headers["X-Cache"] == "miss"   # other image
    assert ask(client, max_tokens=7).headers["X-Cache"] == "miss"                # other params
    assert ask(client, seed=5, temperature=0.9).headers["X-Cache"] == "miss"     # fixed seed…
    assert ask(client, seed=5, temperature=0.9).headers["X-Cache"] == "hit"      # …is deterministic


def test_a_kept_tool_call_replays_with_its_calls_whole_or_streamed(cached):
    """A kept answer holds the raw text: replayed, its calls are read again (fresh ids), and
    other tools, or a call in the history, are another key."""
    client, _ = cached
    tool = {"type": "function", "function": {"name": "count", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"], "additionalProperties": False}}}
    body = {"tools": [tool], "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 100}
    first = ask(client, **body).get_json()["choices"][0]
    again = ask(client, **body)
    assert again.headers["X-Cache"] == "hit"
    choice = again.get_json()["choices"][0]
    assert choice["finish_reason"] == first["finish_reason"] == "tool_calls"
    [call], [kept] = choice["message"]["tool_calls"], first["message"]["tool_calls"]
    assert call["function"] == kept["function"] and call["id"] != kept["id"]
    r = ask(client, stream=True, **body)
    events = [json.loads(line[6:]) for line in r.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
    assert r.headers["X-Cache"] == "hit"
    assert [d["tool_calls"][0]["function"] for d in deltas if "tool_calls" in d] == [
        kept["function"]]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    other = {**tool, "function": {**tool["function"], "name": "tally"}}
    assert ask(client, **{**body, "tools": [other], "tool_choice": "required"}).headers[
        "X-Cache"] == "miss"


@pytest.mark.parametrize("sampling", [{"temperature": 0.8}, {"temperature": 1, "seed": -1},
                                      {"temperature": 1, "seed": -7}])
def test_random_sampling_is_never_cached(cached, sampling):
    """Unseeded, or a negative seed (random, as in llama.cpp): never replayed."""
    client, state = cached
    for _ in range(2):
        r = ask(client, **sampling)
        assert r.status_code == 200 and "X-Cache" not in r.headers
    assert state["responses"].stats()["entries"] == 0


def test_greedy_and_seeded_requests_are_kept(cached):
    client, _ = cached
    for sampling in ({"temperature": 0}, {"temperature": 0, "seed": -1},
                     {"temperature": 1, "seed": 0}, {"temperature": 1, "seed": 123}):
        assert ask(client, **sampling).headers["X-Cache"] == "miss", sampling
        assert ask(client, **sampling).headers["X-Cache"] == "hit", sampling


def test_kept_answers_are_readable_by_this_user_only(make_app, tmp_path):
    """Folder 0700, every file 0600, whatever the umask — big answers included."""
    import os
    old = os.umask(0o022)
    try:
        folder = tmp_path / "responses"
        app = make_app(response_cache_dir=str(folder))
        client = app.test_client()
        assert ask(client).headers["X-Cache"] == "miss"
        app.extensions["vlserve"]["responses"].put("big", {"raw": "x" * 200_000})
        assert ask(client).headers["X-Cache"] == "hit"
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {0o600}, \
        {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in files}
    assert not [p for p in folder.rglob("*") if p.is_dir()]   # no value files in subfolders
