"""`return_progress`: prompt_progress chunks (llama.cpp's shape) before the first token, from
the real engine through the real app; and an OpenAI client reading them over a socket."""

from __future__ import annotations

from conftest import data_url, user
from test_api import sse_events

CHAT = "/v1/chat/completions"


def progress_and_rest(events):
    """(the prompt_progress objects, the other chunks) of a stream, in order; checks that
    every progress chunk comes before the first token and has an empty delta."""
    progress, rest = [], []
    for e in events[:-1]:
        if "prompt_progress" in e:
            assert not any("content" in choice["delta"]
                           for chunk in rest[1:] for choice in chunk["choices"]), \
                "a progress chunk after the first token"
            assert e["choices"][0]["delta"] == {} and e["choices"][0]["finish_reason"] is None
            progress.append(e["prompt_progress"])
        else:
            rest.append(e)
    return progress, rest


def test_a_photo_question_reports_its_image_and_slices_then_ends_at_total(client):
    photo = data_url(160, 120, color=(3, 141, 59))   # in no other test: nothing cached
    body = {"messages": [user(("img", photo), "What is in this photo?")],
            "max_tokens": 4, "stream": True, "return_progress": True,
            "stream_options": {"include_usage": True}}
    events = sse_events(client.post(CHAT, json=body))
    assert events[-1] == "[DONE]"
    progress, rest = progress_and_rest(events)
    usage = rest[-1]["usage"]
    assert all(set(p) == {"total", "cache", "processed", "time_ms", "images"} for p in progress)
    total = usage["prompt_tokens"]
    assert {p["total"] for p in progress} == {total}
    done = [p["processed"] for p in progress]
    assert done == sorted(done) and done[-1] == total, done     # monotonic, ends at total
    assert [p["time_ms"] for p in progress] == sorted(p["time_ms"] for p in progress)
    # the image: announced before its encode (nothing of it in yet), then counted in
    images = [p["images"] for p in progress]
    assert {i["total"] for i in images} == {1}
    encoding = [k for k, i in enumerate(images) if i["encoding"]]
    assert len(encoding) == 1 and images[encoding[0]]["done"] == 0
    after = progress[encoding[0] + 1]
    assert after["images"] == {"total": 1, "done": 1, "tokens_left": 0, "encoding": False}
    assert progress[0]["images"]["tokens_left"] == usage["prompt_tokens_details"]["image_tokens"]
    assert after["processed"] - progress[encoding[0]]["processed"] \
        >= usage["prompt_tokens_details"]["image_tokens"]
    # at least: the start, the text before the image, the image's two, the text after it
    assert len(progress) >= 5, progress
    assert progress[0]["processed"] == progress[0]["cache"] == \
        usage["prompt_tokens_details"]["cached_tokens"]


def test_a_follow_up_reports_the_tokens_it_reuses_as_cache(client):
    first = [user(("img", data_url(120, 90, color=(10, 90, 200))), "Describe it.")]
    r = client.post(CHAT, json={"messages": first, "max_tokens": 6, "temperature": 0})
    answer = r.get_json()["choices"][0]["message"]["content"]
    follow = first + [{"role": "assistant", "content": answer}, user("And the colours?")]
    events = sse_events(client.post(CHAT, json={
        "messages": follow, "max_tokens": 2, "stream": True, "return_progress": True,
        "stream_options": {"include_usage": True}}))
    progress, rest = progress_and_rest(events)
    cached = rest[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > rest[-1]["usage"]["prompt_tokens_details"]["image_tokens"]   # image reused
    assert {p["cache"] for p in progress} == {cached}
    assert progress[0]["processed"] == cached
    assert progress[-1]["processed"] == progress[-1]["total"]
    assert all(p["images"]["total"] == 0 for p in progress)   # its image is in the cache


def test_no_progress_unless_asked_and_a_whole_answer_is_unchanged(client):
    body = {"messages": [user(("img", data_url()), "Hi")], "max_tokens": 3}
    streamed = sse_events(client.post(CHAT, json={**body, "stream": True}))
    assert not any("prompt_progress" in e for e in streamed[:-1])
    whole = client.post(CHAT, json={**body, "return_progress": True})
    assert whole.status_code == 200 and "prompt_progress" not in whole.get_json()
    bad = client.post(CHAT, json={**body, "return_progress": "yes"})
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "return_progress"


def test_an_openai_client_streams_past_the_progress_chunks(live_server):
    from openai import OpenAI
    api = OpenAI(base_url=live_server.url + "/v1", api_key="none")
    stream = api.chat.completions.create(
        model="tiny", max_tokens=4, stream=True, extra_body={"return_progress": True},
        messages=[user(("img", data_url(64, 64)), "Hello")])
    chunks = list(stream)
    progress = [c.model_extra["prompt_progress"] for c in chunks
                if (c.model_extra or {}).get("prompt_progress")]
    assert progress and progress[-1]["processed"] == progress[-1]["total"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
