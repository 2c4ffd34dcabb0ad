"""Continuous batching: several requests decoded together in one llama.cpp context.

The context has `n_seq_max = N` sequences ("slots"). Each `step()`:

1. drops the requests whose client left or whose deadline passed;
2. evaluates at most one image, for the first request (in arrival order) whose prompt has
   reached one: the vision encoder is serial, so one image per step keeps it from starving
   the other sequences' decoding;
3. builds one `llama_batch` holding the next token of every generating sequence plus slices
   of pending prompts (chunked prefill: while anyone is generating a slice is at most
   `n_ubatch` tokens, so a long new prompt does not stall the others), decodes it once;
4. samples each sequence that has fresh logits with its own sampler (its own parameters,
   seed and penalty history; with a response_format, its own grammar: `guide`) and hands
   the token's text to its request.

Requests join between steps (`admit`) and leave when they finish, freeing their slot. A slot
keeps the KV of its last conversation after it frees (the prefix cache, per sequence): a new
request takes the free slot that shares the most with it — a follow-up lands where its
conversation is — and when another slot (busy or not) shares a longer prefix, such as a long
system prompt or the same photo, that prefix is copied over with `llama_memory_seq_cp`
instead of being evaluated again.

Memory: each sequence may use a whole --ctx-size (the engine's `n_ctx`); the context holds
N of them. By default in one unified buffer (copies between sequences only touch cell
metadata, and a lone request decodes as fast as with one sequence); with
`kv_unified=False` each sequence has its own stream (a copy then copies a whole stream).
One worker thread drives a Batcher.

Background prefills (prefill while typing: a `Sequence` with `background=True`) evaluate a
draft conversation into a sequence and stop there, nothing sampled. They are guests:
- a request takes any sequence a prefill holds as if it were free; when that prefill was
  of its own conversation it continues from where the prefill got to (`taken_over`);
- a prefill gets a free sequence only if it would not evict the KV of another owner's
  request that ended less than `settings.prefill_protect` seconds ago (extending that KV,
  or evicting its owner's own earlier conversation, is fine);
- while requests run, a prefill's images wait (a vision encode cannot be cut, and would
  stall their tokens for its whole length), and its text goes only into the spare room of
  a step, at most BACKGROUND_SHARE of the engine's time (`_Credit`);
- a prefill's image is two steps (the vision tower into the embedding cache, then the
  LLM), so a request arriving during one waits for that one only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import llama_cpp

from .output import Delta, Finished, Progress
from ..errors import APIError, InternalError
from .kvcache import ImageUnit, KVRecord, n_tokens, plan_reuse
from ..chat.protocol import SamplingParams
from ..chat.textstream import TextStream

COPY_MIN = 32        # shared tokens worth copying from another sequence instead of evaluating
RATE_WINDOW = 10     # seconds over which the aggregate tokens/s is measured
BACKGROUND_SHARE = 0.15   # of the engine's time that prefills may take while requests run


class RateWindow:
    """Events per second over the last `window` seconds, in one counter per second: memory
    is fixed whatever the rate, and any thread may read it while the engine thread counts."""

    def __init__(self, window: int = RATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window, self._clock = window, clock
        self._counts = [0] * window
        self._seconds = [-1] * window     # which whole second each counter holds
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        second = int(self._clock())
        i = second % self.window
        with self._lock:
            if self._seconds[i] != second:
                self._seconds[i], self._counts[i] = second, 0
            self._counts[i] += n

    def rate(self) -> float:
        now = int(self._clock())
        with self._lock:
            total = sum(c for c, sec in zip(self._counts, self._seconds)
                        if now - self.window < sec <= now)
        return total / self.window


class _Credit:
    """How much background prompt work may join the next steps while requests run: a token
    bucket in seconds. Real work earns BACKGROUND_SHARE / (1 - BACKGROUND_SHARE) of its
    time; a background token costs the seconds per prompt token measured on steps that held
    prompt tokens only. Measured rather than fixed because that cost is ~20 ms on a 2-core
    CPU and ~0.1 ms on a GPU: a fixed slice would either stall a CPU or idle a GPU."""

    def __init__(self):
        self.seconds = 0.0
        self.per_token: float | None = None   # seconds per prompt token (moving average)

    def tokens(self, room: int) -> int:
        if self.per_token is None:
            return min(room, 1)                # unmeasured: one token, and measure it
        return max(0, min(room, int(self.seconds / self.per_token)))

    def after_step(self, seconds: float, *, n_prompt: int, n_background: int, real: bool,
                   generating: bool) -> None:
        if not generating and n_prompt >= 16:  # prompt tokens only: learn their cost
            sample = seconds / n_prompt
            self.per_token = sample if self.per_token is None else \
                0.8 * self.per_token + 0.2 * sample
        if not real:
            self.seconds = 0.0                 # nothing to be fair to
            return
        cost = n_background * (self.per_token or seconds)
        earned = max(0.0, seconds - cost) * BACKGROUND_SHARE / (1 - BACKGROUND_SHARE)
        cap = 64 * (self.per_token or 0.0)     # no bursts after a long quiet spell
        self.seconds = min(cap, self.seconds + earned - cost)


@dataclass
class Sequence:
    """One request as the batcher sees it: what to run, when to give up, where events go."""
    prompt: object                       # engine.Prompt
    params: SamplingParams               # a prefill's are never used
    stop: Callable[[], bool]             # the client left or the deadline passed
    emit: Callable[[object], None]       # Delta | Finished | an exception
    background: bool = False             # a prefill: evaluate the prompt, sample nothing
    owner: str | None = None             # who sent it (a key's name, a client's address)
    progress: bool = False               # emit `Progress` while its prompt is evaluated


class _Slot:
    """One llama.cpp sequence: the KV it holds and the request it serves (if any)."""

    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.kv = KVRecord()
        self.req: Sequence | None = None
        self.last_used = 0.0
        self.real_used = float("-inf")   # when a real request last held it (prefill_protect)
        self.real_owner: str | None = None   # and whose it was
        self.admitted = 0.0

    def start(self, req: Sequence, skip: int) -> None:
        self.req, self.cursor, self.first = req, skip, skip
        self.cached = n_tokens(self.kv.units)
        self.evaluated = n_tokens(req.prompt.units[skip:])
        self.sampler = None                    # made when the prompt is in
        self.guide = None                      # likewise, for a constrained answer
        self.stream = TextStream(req.params.stop)
        self.n_out, self.budget = 0, 0
        self.pending: tuple[int, bytes] | None = None   # sampled, to decode next step
        self.t0, self.t1 = time.monotonic(), None
        self.stats = {"images_encoded": 0, "images_from_cache": 0, "image_encode_ms": 0.0}
        self.encoded: str | None = None   # the image a prefill's last step encoded
        self.admitted = self.t0
        # for Progress: prompt tokens in the KV (cache included), images past the cache
        self.processed = self.cached
        images = [u for u in req.prompt.units[skip:] if isinstance(u, ImageUnit)]
        self.images, self.images_done = len(images), 0
        self.image_tokens_left = sum(u.n_tokens for u in images)

    def progress(self, encoding: bool = False) -> None:
        """Tell a request that asked how far its prompt is."""
        if self.req.progress:
            self.req.emit(Progress(self.cached + self.evaluated, self.cached, self.processed,
                                   (time.monotonic() - self.t0) * 1000, self.images,
                                   self.images_done, self.image_tokens_left, encoding))

    @property
    def prefilling(self) -> bool:
        return self.req is not None and self.cursor < len(self.req.prompt.units)

    @property
    def real(self) -> bool:
        """Serving a request (not a background prefill)."""
        return self.req is not None and not self.req.background

    @property
    def guest(self) -> bool:
        return self.req is not None and self.req.background


class Batcher:
    def __init__(self, engine, n_seq: int, *, unified: bool):
        self.engine = engine
        self.slots = [_Slot(i) for i in range(n_seq)]
        self.unified = unified
        # One worker thread drives a batcher; the lock keeps it whole if several ever do
        # (apps sharing one engine in the tests, engine.generate() beside a worker).
        self._lock = threading.RLock()
        # for /metrics: decode steps, the tokens and sequences in them, tokens generated
        self.steps = self.step_tokens = self.step_sequences = 0
        self.generated = RateWindow()
        self._credit = _Credit()

    # -- what the worker asks --

    @property
    def active(self) -> int:
        """Requests running (background prefills are not counted: they give way)."""
        return sum(s.real for s in self.slots)

    @property
    def free(self) -> int:
        """Sequences a request may take now (a prefill's included)."""
        return len(self.slots) - self.active

    @property
    def starting(self) -> int:
        """Requests admitted whose prompt has not begun: their first slice is still to come."""
        return sum(s.real and s.prefilling and s.cursor == s.first for s in self.slots)

    def stats(self) -> dict:
        """For /metrics (any thread): sequences, decode steps, the tokens and sequences in
        them, and the tokens all sequences generated per second over the last RATE_WINDOW."""
        return {"parallel": len(self.slots), "busy": self.active, "steps": self.steps,
                "step_tokens": self.step_tokens, "step_sequences": self.step_sequences,
                "tokens_per_second": self.generated.rate()}

    def admit(self, req: Sequence) -> bool:
        """Give the request the free slot that shares the most with its prompt (copying a
        longer shared prefix from another slot when there is one). A request may take a
        prefill's slot (continuing from its KV when the prefill was of this conversation);
        there must be one free. A prefill takes only a free slot it may evict: False when
        there is none."""
        with self._lock:
            for slot in self.slots:   # superseded prefills give their slots back first
                if slot.req is not None and slot.req.stop():
                    self._finish(slot, "cancelled")
            units = req.prompt.units
            piece = lambda i: self.engine.piece(units[i], special=True)  # noqa: E731
            plans = {s: self._plan(s, units, piece) for s in self.slots}
            if req.background:
                protect = time.monotonic() - self.engine.settings.prefill_protect
                free = [s for s in self.slots if s.req is None
                        and (s.real_used < protect or plans[s][0] == len(s.kv.units)
                             or (req.owner is not None and s.real_owner == req.owner))]
                if not free:
                    return False
            else:
                free = [s for s in self.slots if not s.real]
                if not free:   # the worker admits only while `free`; say so if a caller did not
                    raise InternalError("no free sequence for the request")
            # counted in tokens, not units: an image is one unit of hundreds of tokens
            saved = {s: n_tokens(units[:plans[s][1]]) for s in self.slots}
            # the free slot where this prompt saves the most, net of the cached tokens it
            # would throw away (another conversation's cache is worth keeping); an idle one
            # before a prefill's; then LRU
            slot = max(free, key=lambda s: (saved[s] - n_tokens(s.kv.units[plans[s][0]:]),
                                            s.req is None, -s.last_used))
            if slot.req is not None:   # a prefill's: it ends here, its KV stays
                self._finish(slot, "taken_over")
            donor = max((s for s in self.slots if s is not slot), key=lambda s: saved[s],
                        default=None)
            if donor is not None and saved[donor] >= saved[slot] + COPY_MIN:
                self._copy(donor, slot, plans[donor][0])
                plans[slot] = self._plan(slot, units, piece)
            keep, skip = plans[slot]
            p0 = slot.kv.truncate(keep)
            if not llama_cpp.llama_memory_seq_rm(self._memory(), slot.seq_id, p0, -1):
                self._forget(slot)   # memory that cannot be cut (recurrent models): start over
                skip = 0
            slot.start(req, skip)
            slot.progress()
            return True

    def step(self) -> None:
        """One round: every active request advances by a token or a prompt slice."""
        with self._lock:
            for slot in self.slots:
                if slot.req is not None and slot.req.stop():
                    self._finish(slot, "cancelled")
            self._image_step()
            items, owners = self._build()
            if not items:
                return
            t0 = time.monotonic()
            try:
                self.engine.decode(items)
            except Exception as exc:   # the KV of every sequence in the batch is in doubt
                for slot in {s for s, _ in owners}:
                    self._fail(slot, exc)
                return
            kinds = [(slot.real, kind) for slot, (kind, _) in owners]
            self._credit.after_step(time.monotonic() - t0,
                                    n_prompt=sum(k == "pre" for _, k in kinds),
                                    n_background=sum(not r for r, _ in kinds),
                                    real=any(r for r, _ in kinds),
                                    generating=any(k == "gen" for _, k in kinds))
            self.steps += 1
            self.step_tokens += len(items)
            self.step_sequences += len({s for s, _ in owners})
            self._after_decode(items, owners)

    def close(self) -> None:
        with self._lock:
            for slot in self.slots:
                if slot.req is not None:
                    self._finish(slot, "cancelled")

    def forget_all(self) -> None:
        with self._lock:
            llama_cpp.llama_memory_clear(self._memory(), True)
            for slot in self.slots:
                slot.kv.clear()

    def kv_tokens(self) -> int:
        return sum(n_tokens(s.kv.units) for s in self.slots)

    # -- admission helpers --

    def _plan(self, slot: _Slot, units, piece) -> tuple[int, int]:
        kv = slot.kv
        cached_piece = lambda i: kv.pieces.get(i) or self.engine.piece(  # noqa: E731
            kv.units[i], special=True)
        return plan_reuse(kv.units, cached_piece, units, piece)

    def _copy(self, donor: _Slot, slot: _Slot, keep: int) -> None:
        """slot's KV := donor's first `keep` units. Within one buffer (unified) only cell
        metadata changes; across streams llama.cpp copies the whole stream, then we cut."""
        memory, src, dst = self._memory(), donor.seq_id, slot.seq_id
        end = donor.kv.starts[keep] if keep < len(donor.kv.units) else donor.kv.end
        llama_cpp.llama_memory_seq_rm(memory, dst, -1, -1)
        if self.unified:
            llama_cpp.llama_memory_seq_cp(memory, src, dst, 0, end)
        else:
            llama_cpp.llama_memory_seq_cp(memory, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(memory, dst, end, -1)
        slot.kv = KVRecord(units=donor.kv.units[:keep], starts=donor.kv.starts[:keep],
                           pieces={i: p for i, p in donor.kv.pieces.items() if i < keep},
                           end=end)

    # -- one step --

    def _image_step(self) -> None:
        """The next image of the first (oldest) prompt that has reached one; a prefill's
        only while no request runs."""
        waiting = [s for s in self.slots if s.prefilling
                   and isinstance(s.req.prompt.units[s.cursor], ImageUnit)]
        if any(s.real for s in self.slots):
            waiting = [s for s in waiting if s.real]
        if not waiting:
            return
        slot = min(waiting, key=lambda s: s.admitted)
        unit = slot.req.prompt.units[slot.cursor]
        chunk = slot.req.prompt.images[slot.cursor]
        try:
            # a prefill's image in two steps, the vision tower then the LLM: a request that
            # arrives meanwhile waits for one of the two (neither can be cut), not both
            if slot.guest and self.engine.encode_to_cache(chunk, unit, slot.stats):
                slot.encoded = unit.key
                return
            # (the second step's cache hit is the first step's encode: not counted twice)
            stats = slot.stats if slot.encoded != unit.key else dict.fromkeys(slot.stats, 0)
            slot.progress(encoding=True)
            self.engine.eval_image(chunk, unit, slot.seq_id, slot.kv.end, stats)
        except Exception as exc:
            self._forget(slot)
            self._fail(slot, exc)
            return
        slot.kv.append(unit, unit.n_pos)
        slot.cursor += 1
        slot.processed += unit.n_tokens
        slot.images_done += 1
        slot.image_tokens_left -= unit.n_tokens
        if slot.prefilling:   # (the prompt's end is told by the step that ends it)
            slot.progress()

    def _build(self):
        """(items, owners): batch items (token, pos, seq, logits) and, per item, its slot
        and what it is: ("gen", piece) for a sampled token, ("pre", last?) for a prompt's."""
        items, owners = [], []
        for slot in self.slots:
            if slot.req is not None and slot.pending is not None:
                token, piece = slot.pending
                items.append((token, slot.kv.end, slot.seq_id, True))
                owners.append((slot, ("gen", piece)))
        generating = bool(items)
        n_batch = self.engine.settings.n_batch
        room = n_batch - len(items)
        if generating:   # a long new prompt comes in slices: the others keep their pace
            room = min(room, self.engine.settings.n_ubatch)
        # requests' prompts first, then prefills' (within the credit while requests run)
        prefilling = sorted((s for s in self.slots if s.prefilling),
                            key=lambda s: (s.guest, s.admitted))
        real = any(s.real for s in self.slots)
        for slot in prefilling:
            if slot.guest and real:
                room = self._credit.tokens(room)
                real = False   # the credit is for all prefills together
            units, pos = slot.req.prompt.units, slot.kv.end
            j = slot.cursor
            while j < len(units) and room > 0 and not isinstance(units[j], ImageUnit):
                last = j == len(units) - 1
                items.append((units[j], pos, slot.seq_id, last and slot.real))
                owners.append((slot, ("pre", last)))
                pos, j, room = pos + 1, j + 1, room - 1
        return items, owners

    def _after_decode(self, items, owners) -> None:
        sample, prompted = [], {}
        for i, ((token, _pos, _seq, _logits), (slot, (kind, extra))) in \
                enumerate(zip(items, owners)):
            if kind == "gen":
                slot.kv.append(token, 1, extra)
                slot.pending = None
                sample.append((slot, i))
            else:
                slot.kv.append(token, 1)
                slot.cursor += 1
                slot.processed += 1
                if slot.real:
                    prompted[slot] = None   # one Progress per slice, before any token
                if extra and slot.guest:   # a prefill is done: nothing to sample
                    slot.t1 = time.monotonic()
                    self._finish(slot, "done")
                elif extra:   # the prompt's last token: the answer starts here
                    try:
                        self._prompt_done(slot)
                    except APIError as exc:   # a grammar this model's tokens cannot follow
                        self._fail(slot, exc)
                        continue
                    sample.append((slot, i))
        for slot in prompted:
            if slot.req is not None:
                slot.progress()
        for slot, index in sample:
            if slot.req is not None:
                self._sample(slot, index)

    def _prompt_done(self, slot: _Slot) -> None:
        slot.t1 = time.monotonic()
        slot.sampler = self.engine.new_sampler(slot.req.params)
        if slot.req.params.constraint is not None:
            slot.guide = self.engine.guides.new(slot.req.params.constraint,
                                                after_thinking=slot.req.prompt.thinking)
        slot.budget = min(slot.req.prompt.max_new_tokens,
                          self.engine.n_ctx - n_tokens(slot.kv.units))

    def _sample(self, slot: _Slot, index: int) -> None:
        if slot.n_out >= slot.budget:
            self._finish(slot, "length")
            return
        engine = self.engine
        token = engine.sample(slot.sampler, index, slot.guide)
        if engine.ends_generation(token):
            self._finish(slot, "stop")
            return
        slot.n_out += 1
        self.generated.add()
        piece = engine.piece(token)
        if slot.guide is not None:
            try:
                slot.guide.accept(token, piece)
            except APIError as exc:
                self._fail(slot, exc)
                return
        text, hit = slot.stream.feed(piece)
        if text:
            slot.req.emit(Delta(text))
        if hit or (slot.guide is not None and slot.guide.complete):
            self._finish(slot, "stop")
        elif slot.n_out >= slot.budget:
            self._finish(slot, "length")
        else:
            slot.pending = (token, piece)

    # -- leaving --

    def _finish(self, slot: _Slot, reason: str) -> None:
        req = slot.req
        if reason != "stop" and (tail := slot.stream.flush()):
            req.emit(Delta(tail))
        prompt_tokens = slot.cached + slot.evaluated
        if slot.guest:   # a prefill: how far it got, whatever ended it
            units = req.prompt.units
            done = Finished(reason, prompt_tokens, 0, {
                "prompt_ms": round(((slot.t1 or time.monotonic()) - slot.t0) * 1000, 2),
                "prompt_tokens_evaluated": n_tokens(units[slot.first:slot.cursor]),
                "cached_tokens": slot.cached,
                "image_encode_ms": round(slot.stats["image_encode_ms"], 2),
                "images_encoded": slot.stats["images_encoded"],
                "images_from_cache": slot.stats["images_from_cache"],
            }, cached_tokens=slot.cached)
        elif slot.t1 is None:   # stopped before its prompt was in
            done = Finished(reason, prompt_tokens, 0)
        else:
            t2 = time.monotonic()
            decode_s = t2 - slot.t1
            done = Finished(reason, prompt_tokens, slot.n_out, {
                "prompt_ms": round((slot.t1 - slot.t0) * 1000, 2),
                "prompt_tokens_evaluated": slot.evaluated,
                "cached_tokens": slot.cached,
                "image_encode_ms": round(slot.stats["image_encode_ms"], 2),
                "images_encoded": slot.stats["images_encoded"],
                "images_from_cache": slot.stats["images_from_cache"],
                "predicted_ms": round(decode_s * 1000, 2),
                "decode_tokens_per_s": (round(slot.n_out / decode_s, 2)
                                        if decode_s > 0 and slot.n_out else 0.0),
            }, cached_tokens=slot.cached)
        # free the sequence before the request hears it is done: a client that has its whole
        # answer must not then see its sequence still busy (in /health, /metrics)
        self._release(slot)
        req.emit(done)

    def _fail(self, slot: _Slot, exc: Exception) -> None:
        if not isinstance(exc, APIError):
            exc = InternalError(f"generation failed: {type(exc).__name__}")
        try:
            self._forget(slot)
        except APIError:
            pass   # the request fails anyway, with the first error
        req = slot.req
        self._release(slot)
        req.emit(exc)

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None
        slot.last_used = time.monotonic()
        if slot.real:
            slot.real_used, slot.real_owner = slot.last_used, slot.req.owner
        slot.req, slot.pending, slot.guide = None, None, None

    def _forget(self, slot: _Slot) -> None:
        if llama_cpp.llama_memory_seq_rm(self._memory(), slot.seq_id, -1, -1):
            slot.kv.clear()
        elif not any(s.req is not None and s is not slot for s in self.slots):
            self.forget_all()   # a memory that refuses even that: clear it all (idle only)
        else:
            slot.kv.clear()
            raise InternalError("the KV cache could not free a sequence")

    def _memory(self):
        return self.engine.memory()
