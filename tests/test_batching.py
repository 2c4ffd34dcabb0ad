"""Several requests in one llama.cpp context (batch.py), driven step by step on the real
engine with the tiny model: with a fixed seed each request produces exactly what it
produces alone, whatever runs beside it, leaves, or is cancelled; images land in the right
conversation; prefixes are reused per sequence and copied between sequences; nothing is left
behind after many requests. (Through HTTP: test_server.py and the bench.)"""

from __future__ import annotations


import llama_cpp
import pytest

from conftest import data_url, wait_for
from vlserve.engine.batch import Sequence
from vlserve.engine.llama import LlamaEngine
from vlserve.engine.output import Delta, Finished
from vlserve.chat.images import ImageLimits, decode_data_url
from vlserve.chat.protocol import parse_chat_request

PARALLEL = 4
SYSTEM = "You are the assistant of a hardware shop. " * 12   # a long shared prefix (~110 tokens)


@pytest.fixture(scope="module", params=[False, True], ids=["split-kv", "unified-kv"])
def engine(settings, request):
    eng = LlamaEngine(settings.replace(parallel=PARALLEL, kv_unified=request.param,
                                       n_ctx=4096))
    yield eng
    eng.close()


def request_of(text, *, image=None, system=None, **params):
    content = [{"type": "text", "text": text}]
    if image:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": content}]
    # Seeded sampling, not greedy: the tiny model's greedy answers collapse into the same
    # loop whatever the input, while a seeded draw shows any change in the logits.
    return parse_chat_request({"messages": messages, "temperature": 1.0, "seed": 7,
                               "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 24,
                               **params}, max_tokens_cap=10**6)


class Run:
    """One request in the batcher: its events as they come."""

    def __init__(self, engine, req, cancel_after: int | None = None):
        images = [decode_data_url(p.url, ImageLimits()) for p in req.image_parts]
        self.prompt = engine.prepare(req, images)
        self.deltas: list[str] = []
        self.end = None
        self.cancel_after = cancel_after
        self.seq = Sequence(self.prompt, req.params, self._stop, self._emit)
        self.slots = engine.batcher.slots
        self.held_at_end = None   # whether its sequence was still taken when it heard "done"

    def _stop(self) -> bool:
        return self.cancel_after is not None and len(self.deltas) >= self.cancel_after

    def _emit(self, event) -> None:
        if isinstance(event, Delta):
            self.deltas.append(event.text)
        else:
            self.end = event
            self.held_at_end = any(slot.req is self.seq for slot in self.slots)
            self.prompt.close()

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def run_together(engine, *runs, admit_later=()):
    """Admit `runs` now and each (after_steps, run) of `admit_later` after that many steps;
    step until all are done. Returns the number of steps."""
    batcher, steps, later = engine.batcher, 0, sorted(admit_later, key=lambda x: x[0])
    for run in runs:
        batcher.admit(run.seq)
    every = list(runs) + [r for _, r in later]
    while any(r.end is None for r in every):
        while later and later[0][0] <= steps:
            batcher.admit(later.pop(0)[1].seq)
        batcher.step()
        steps += 1
        assert steps < 10_000
    return steps


def alone(engine, req) -> Run:
    engine._forget_kv()
    run = Run(engine, req)
    run_together(engine, run)
    return run


def kv_consistent(engine) -> None:
    """Every slot's record matches what the KV cache holds for its sequence."""
    memory = engine.memory()
    for slot in engine.batcher.slots:
        assert slot.req is None
        top = llama_cpp.llama_memory_seq_pos_max(memory, slot.seq_id)
        assert top == slot.kv.end - 1, (slot.seq_id, top, slot.kv.end)


REQUESTS = [request_of("Tell me about hammers."),
            request_of("What is in this picture?", image=data_url(96, 64)),
            request_of("And screws?", max_tokens=40),
            request_of("Describe it.", image=data_url(64, 96, color=(10, 200, 30)))]


def test_each_sequence_has_the_whole_ctx_size_and_no_more(engine):
    # a unified buffer holds 4 x 4096 cells: no one sequence may take more than its 4096,
    # so four full conversations always fit together
    assert engine.n_ctx == 4096
    assert engine._ctx.n_ctx() == 4 * 4096
    assert engine.cache_stats()["sequences"] == {"parallel": PARALLEL, "busy": 0}


def test_each_of_four_together_answers_as_alone(engine):
    expected = [alone(engine, r) for r in REQUESTS]
    engine._forget_kv()
    runs = [Run(engine, r) for r in REQUESTS]
    steps = run_together(engine, *runs)
    assert [r.text for r in runs] == [e.text for e in expected]
    assert [r.end.completion_tokens for r in runs] == [24, 24, 40, 24]
    assert steps < 24 + 40      # together: the 24-token answers rode along the 40-token one
    assert engine.batcher.active == 0
    kv_consistent(engine)


def test_images_land_in_their_own_conversations(engine):
    a = request_of("What is it?", image=data_url(96, 64))
    b = request_of("What is it?", image=data_url(96, 64, color=(10, 200, 30)))
    alone_a, alone_b = alone(engine, a), alone(engine, b)
    assert alone_a.text != alone_b.text     # the picture decides the answer
    engine._forget_kv()
    engine._embeddings.clear()              # both encoded in the batch, not from the cache
    ra, rb = Run(engine, a), Run(engine, b)
    run_together(engine, ra, rb)
    assert (ra.text, rb.text) == (alone_a.text, alone_b.text)
    assert ra.end.timings["images_encoded"] == rb.end.timings["images_encoded"] == 1


def test_one_cancelled_the_others_unchanged(engine):
    expected = [alone(engine, r).text for r in REQUESTS]
    engine._forget_kv()
    runs = [Run(engine, r, cancel_after=5 if i == 1 else None) for i, r in enumerate(REQUESTS)]
    run_together(engine, *runs)
    assert runs[1].end.finish_reason == "cancelled" and len(runs[1].deltas) == 5
    assert runs[1].held_at_end is False
    assert [runs[i].text for i in (0, 2, 3)] == [expected[i] for i in (0, 2, 3)]
    kv_consistent(engine)


def test_leaving_at_max_tokens_or_a_stop_string_lets_the_others_go_on(engine):
    long = request_of("Tell me everything.", max_tokens=60)
    full = alone(engine, long).text
    probe = alone(engine, request_of("Short one.")).text
    stop = probe[3:6]          # a stop string the short request will meet
    short = request_of("Short one.", max_tokens=2)
    stopped = request_of("Short one.", stop=[stop])
    engine._forget_kv()
    runs = [Run(engine, long), Run(engine, short), Run(engine, stopped)]
    run_together(engine, *runs)
    assert runs[0].text == full and runs[0].end.completion_tokens == 60
    assert runs[1].end.finish_reason == "length" and runs[1].end.completion_tokens == 2
    assert runs[2].end.finish_reason == "stop" and stop not in runs[2].text
    assert probe.startswith(runs[2].text)
    # each heard it was done only once its sequence was free (a client reading /metrics
    # or /health right after its answer must not see it still busy)
    assert [r.held_at_end for r in runs] == [False, False, False]


def test_a_long_prompt_comes_in_slices_while_another_generates(engine, settings):
    """Chunked prefill: the running answer keeps getting tokens while a prompt of several
    micro-batches is evaluated beside it."""
    running = Run(engine, request_of("Keep talking.", max_tokens=200))
    long_req = request_of("Summarize: " + "the shop sells nails and glue. " * 80,
                          max_tokens=4)
    engine._forget_kv()
    long_run = Run(engine, long_req)
    assert long_run.prompt.n_tokens > 3 * settings.n_ubatch
    seen: list[int] = []
    original = long_run.seq.emit

    def emit(event):   # how far the running answer was when the long one began answering
        if not seen:
            seen.append(len(running.deltas))
        original(event)

    long_run.seq.emit = emit
    run_together(engine, running, admit_later=[(3, long_run)])
    # it arrived after 3 steps and needed at least 4 slices: the runner kept going meanwhile
    assert seen[0] >= 3 + 3
    assert running.end.completion_tokens == 200 and long_run.end.completion_tokens == 4
    assert long_run.text == alone(engine, long_req).text


def test_a_follow_up_finds_its_conversation_in_its_sequence(engine):
    engine._forget_kv()
    first = request_of("What do you sell?", temperature=0)   # plain text to send back
    turn1 = Run(engine, first)
    run_together(engine, turn1)
    others = [Run(engine, request_of(f"Unrelated question {i}?")) for i in range(3)]
    run_together(engine, *others)            # the other three free sequences take these
    follow = parse_chat_request({"temperature": 0, "max_tokens": 8, "messages": [
        {"role": "user", "content": "What do you sell?"},
        {"role": "assistant", "content": turn1.text},
        {"role": "user", "content": "And on Sundays?"}]}, max_tokens_cap=10**6)
    turn2 = Run(engine, follow)
    run_together(engine, turn2)
    # all of turn 1 but its last generated token (sampled, never decoded) was still there
    assert turn2.end.cached_tokens == turn1.end.prompt_tokens + turn1.end.completion_tokens - 1


def test_a_shared_system_prompt_is_copied_not_evaluated_again(engine):
    a = request_of("First customer.", system=SYSTEM, max_tokens=30)
    b = request_of("Second customer.", system=SYSTEM, max_tokens=8)
    expected_b = alone(engine, b).text
    engine._forget_kv()
    ra, rb = Run(engine, a), Run(engine, b)
    run_together(engine, ra, admit_later=[(2, rb)])    # a is mid-answer when b arrives
    assert rb.end.cached_tokens > 100                  # the system prompt came from a's sequence
    assert rb.end.timings["prompt_tokens_evaluated"] < 25
    assert rb.text == expected_b                       # and it is the same KV
    kv_consistent(engine)


def test_no_kv_left_behind_after_200_mixed_requests(engine):
    engine._forget_kv()
    kinds = [lambda i: request_of(f"Question {i % 7}?", max_tokens=3 + i % 5),
             lambda i: request_of("What is it?", image=data_url(64 + 8 * (i % 3), 64),
                                  max_tokens=4),
             lambda i: request_of(f"Follow {i % 4}.", system=SYSTEM, max_tokens=2)]
    done = 0
    for wave in range(50):
        runs = [Run(engine, kinds[(wave + j) % 3](wave * 4 + j),
                    cancel_after=1 if (wave + j) % 5 == 0 else None) for j in range(4)]
        run_together(engine, *runs[:2], admit_later=[(1, runs[2]), (2, runs[3])])
        done += sum(r.end is not None for r in runs)
    assert done == 200
    assert engine.batcher.active == 0 and engine.batcher.free == PARALLEL
    kv_consistent(engine)
    assert all(len(s.kv.units) <= engine.n_ctx for s in engine.batcher.slots)
    # and the engine still answers exactly
    again = Run(engine, REQUESTS[0])
    run_together(engine, again)
    assert again.text == alone(engine, REQUESTS[0]).text


def test_requests_arriving_together_start_together(settings):
    """While a request is still on its way in (tokenizing on its HTTP thread), an idle engine
    holds the first one's prefill back a moment, so both prompts share the first step."""
    from vlserve.engine.worker import Worker
    eng = LlamaEngine(settings.replace(parallel=2))
    worker = Worker(lambda *_: eng, queue_size=4, request_timeout=30, warmup=False).start()
    assert worker.wait_ready(30)
    batches: list[set[int]] = []
    decode = eng.decode
    eng.decode = lambda items: (batches.append({i[2] for i in items}), decode(items))
    a, b = request_of("First in."), request_of("Right behind.")
    try:
        with worker.arriving():                      # b is on its way
            job_a = worker.submit(eng.prepare(a, []), a.params, engine=eng)
            wait_for(lambda: eng.batcher.active == 1,    # a is admitted, and waits
                     "the first request to be admitted")
            job_b = worker.submit(eng.prepare(b, []), b.params, engine=eng)
        for job in (job_a, job_b):
            while not isinstance(job.next_event(10), Finished):
                pass
        assert batches[0] == {0, 1}                  # one step for both prompts
    finally:
        worker.stop()
        eng.close()


@pytest.mark.parametrize("flag, value, says", [
    ("--parallel", "0", "use 1 to 64 sequences"),
    ("--parallel", "many", "'many' is not 'auto' or a number of sequences"),
    ("--n-gpu-layers", "-2", "use -1 for all layers, 0 for none"),
])
def test_the_cli_refuses_bad_counts(flag, value, says):
    from click.testing import CliRunner
    from vlserve.cli import main
    result = CliRunner().invoke(main, ["serve", flag, value])
    assert result.exit_code == 2 and says in result.output


def test_a_full_batcher_refuses_clearly(engine):
    from vlserve.errors import InternalError
    engine._forget_kv()
    runs = [Run(engine, request_of(f"q{i}")) for i in range(PARALLEL + 1)]
    for run in runs[:PARALLEL]:
        engine.batcher.admit(run.seq)
    with pytest.raises(InternalError):
        engine.batcher.admit(runs[-1].seq)
    runs[-1].prompt.close()
    while engine.batcher.active:  # the admitted ones finish
        engine.batcher.step()
    assert all(r.end is not None for r in runs[:PARALLEL])
