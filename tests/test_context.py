"""Table tests of fitting a conversation into the context, with a fake token counter."""

from __future__ import annotations

import pytest

from vlserve.chat.context import PLACEHOLDER, fit_messages, strip_thinking
from vlserve.errors import ContextLengthError
from vlserve.chat.protocol import ImagePart, Message, TextPart

IMAGE_TOKENS = 100


def count(messages) -> int:
    """Fake counter: 4 per message + 1 per word + 100 per image + 3 for the generation prompt."""
    return 3 + sum(4 + sum(len(p.text.split()) if isinstance(p, TextPart) else IMAGE_TOKENS
                           for p in m.parts) for m in messages)


def msg(role: str, label: str, words: int = 10, img: int = 0) -> Message:
    """A message whose text starts with `label` and has `words` words, then `img` images."""
    text = " ".join([label] + ["w"] * (words - 1))
    return Message(role, (TextPart(text),) + (ImagePart(f"data:{label}"),) * img)


def S(label, words=5):
    return msg("system", label, words)


def U(label, words=10, img=0):
    return msg("user", label, words, img)


def A(label, words=10):
    return msg("assistant", label, words)


def T(label, words=10, img=0):
    """A tool's result (a screenshot, with img=1)."""
    return msg("tool", label, words, img)


def label(m: Message) -> str:
    return m.parts[0].text.split()[0]


def placeholders(m: Message) -> int:
    return sum(p == TextPart(PLACEHOLDER) for p in m.parts)


IMAGES_THEN_TURNS = (S("s"), U("u1", img=1), A("a1"), U("u2", img=1), A("a2"),
                     U("u3", img=1), A("a3"), U("u4"))
SEVERAL_IMAGES = (S("s"), U("u1", 1, 1), A("a1", 1), U("u2", 1, 1), A("a2", 1),
                  U("u3", 1, 1), A("a3", 1), U("u4", 1, 1))

# (conversation, budget, block, kept labels, labels holding a placeholder, images, messages)
CASES = {
    "fits as is": (
        (S("s"), U("u1", img=1), A("a1"), U("u2")), 1000, 0.25,
        "s u1 a1 u2", "", 0, 0),
    # 154 tokens, budget 140: one block (35) of savings is enough, one image gives 94.
    "one old image replaced": (
        (S("s"), U("u1", img=1), A("a1"), U("u2")), 140, 0.25,
        "s u1 a1 u2", "u1", 1, 0),
    # 443 tokens, budget 330: excess 113 rounds up to 2 blocks (165) = 2 images, oldest
    # first; u3 keeps its image, and so does u4, the last user message, always.
    "several images oldest first": (
        SEVERAL_IMAGES, 330, 0.25, "s u1 a1 u2 a2 u3 a3 u4", "u1 u2", 2, 0),
    # 410 tokens, 128 without images; budget 100: excess 28 rounds up to 50 = 2 turns.
    "images all replaced then oldest turns dropped": (
        IMAGES_THEN_TURNS, 100, 0.25, "s u3 a3 u4", "u3", 3, 4),
    "every system message kept when all history goes": (
        (S("s1"), S("s2"), U("u1"), A("a1"), U("u2")), 40, 0.25,
        "s1 s2 u2", "", 0, 2),
    "orphan assistant at the start is its own turn": (
        (A("a0"), U("u1"), A("a1"), U("u2")), 55, 0.05,
        "u1 a1 u2", "", 0, 1),
    "orphan assistant after the system prompt": (
        (S("s"), A("a0"), U("u1"), A("a1"), U("u2")), 64, 0.05,
        "s u1 a1 u2", "", 0, 1),
    "trailing assistant prefill kept (images only)": (
        (S("s"), U("u1", img=1), A("a1"), U("u2"), A("p", 3)), 100, 0.25,
        "s u1 a1 u2 p", "u1", 1, 0),
    "trailing assistant prefill kept (turns dropped)": (
        (S("s"), U("u1", img=1), A("a1"), U("u2"), A("p", 3)), 50, 0.25,
        "s u2 p", "", 1, 2),
    # An agent's loop: one question, then calls and results. 382 tokens, budget 300: the
    # excess 82 rounds up to 150, two images, the oldest: the question's photo and the
    # first screenshot; the newest screenshot stays. Nothing after the question is dropped.
    "an agent's screenshots oldest first, the newest kept": (
        (S("s"), U("u1", img=1), A("c1"), T("t1", img=1), A("c2"), T("t2", img=1)), 300, 0.25,
        "s u1 c1 t1 c2 t2", "u1 t1", 2, 0),
    "turn with several assistant messages dropped whole": (
        (S("s"), U("u1"), A("a1"), A("a1b"), U("u2"), A("a2"), U("u3")), 75, 0.1,
        "s u2 a2 u3", "", 0, 3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fit_table(case):
    messages, budget, block, kept, with_placeholder, images, dropped = case
    fit = fit_messages(messages, budget=budget, count_tokens=count, block=block)
    assert " ".join(label(m) for m in fit.messages) == kept
    assert " ".join(label(m) for m in fit.messages if placeholders(m)) == with_placeholder
    assert (fit.dropped_images, fit.dropped_messages) == (images, dropped)
    assert fit.prompt_tokens == count(fit.messages) <= budget
    assert fit.changed == bool(images or dropped)
    assert fit.messages[-1] == messages[-1]  # the protected end is never touched


def test_unchanged_fit_returns_the_same_messages():
    messages = (S("s"), U("u1"))
    assert fit_messages(messages, budget=100, count_tokens=count).messages is messages


def test_last_message_too_big_fails_before_its_images_are_dropped():
    messages = (S("s"), U("u1", img=1), A("a1"), U("u2", img=1))  # protected: 3+9+114
    seen = []

    def counting(msgs):
        seen.append(msgs)
        return count(msgs)

    with pytest.raises(ContextLengthError) as err:
        fit_messages(messages, budget=120, count_tokens=counting)
    assert "126" in err.value.message and "120" in err.value.message
    assert (err.value.param, err.value.code, err.value.status) == (
        "messages", "context_length_exceeded", 400)
    assert all(s[-1] == messages[-1] for s in seen)


def test_no_user_message_is_all_protected():
    with pytest.raises(ContextLengthError):
        fit_messages((S("s", 50),), budget=20, count_tokens=count)


def grow(steps: int, words: int, img: int = 0):
    """The conversations a client sends as a chat grows: one more turn each time."""
    history = (S("s"),)
    for t in range(steps):
        yield history + (U(f"u{t}", words, img),)
        history += (U(f"u{t}", words, img), A(f"a{t}", words))


@pytest.mark.parametrize("block", [0.25, 0.5])
def test_blocks_keep_the_cached_prefix_for_many_turns(block):
    budget, growth, breaks, previous = 400, 0, 0, None
    for messages in grow(30, 20):
        fit = fit_messages(messages, budget=budget, count_tokens=count, block=block)
        assert fit.prompt_tokens <= budget
        if previous is not None:
            growth += count(messages) - count(previous[0])
            # The cache survives when last turn's prompt is a prefix of this one's.
            breaks += fit.messages[:len(previous[1])] != previous[1]
        previous = (messages, fit.messages)
    assert growth > 3 * budget  # the test means something: many blocks of growth
    assert breaks <= growth / (block * budget) + 1
    assert breaks < 30 / 2


def test_turns_never_come_back_as_images_pile_up():
    """Each new turn's image (replaced once it is history) adds savings; counting those
    must not bring dropped turns back, which would change the start of the prompt."""
    budget, dropped = 2000, []
    for messages in grow(80, 20, img=1):
        fit = fit_messages(messages, budget=budget, count_tokens=count)
        assert fit.prompt_tokens <= budget
        dropped.append(fit.dropped_messages)
    assert dropped == sorted(dropped) and dropped[-1] > 50
    assert len(set(dropped)) <= 8  # turn drops change only once per block (of 500)


@pytest.mark.parametrize("budget", [20_000, 5_000, 300])
def test_count_tokens_is_called_a_logarithmic_number_of_times(budget):
    messages = (S("s"),)
    for t in range(200):
        messages += (U(f"u{t}", 20, img=1), A(f"a{t}", 30))
    messages += (U("last", 20, img=1),)
    calls = []

    def counting(msgs):
        calls.append(1)
        return count(msgs)

    fit = fit_messages(messages, budget=budget, count_tokens=counting)
    assert fit.changed and fit.prompt_tokens <= budget
    assert len(calls) < 40


def test_fit_is_always_within_budget():
    messages = IMAGES_THEN_TURNS
    for budget in range(26, 420, 3):
        fit = fit_messages(messages, budget=budget, count_tokens=count)
        assert fit.prompt_tokens == count(fit.messages) <= budget


# ---- strip_thinking -------------------------------------------------------------------

def text(m: Message) -> str:
    return m.parts[0].text


def test_closed_think_block_removed_from_history():
    messages = (U("q"), Message("assistant", (TextPart("<think>hmm\nlong</think>\n\nAnswer"),)),
                U("q2"))
    out = strip_thinking(messages)
    assert text(out[1]) == "Answer"
    assert out[0] is messages[0] and out[2] is messages[2]


def test_unclosed_reasoning_prefix_removed():
    messages = (U("q"), Message("assistant", (TextPart("the template opened it</think> A"),)),
                U("q2"))
    assert text(strip_thinking(messages)[1]) == "A"


def test_last_assistant_after_last_user_untouched():
    after = Message("assistant", (TextPart("<think>keep</think>prefill"),))
    messages = (U("q"), A("a"), U("q2"), after)
    assert strip_thinking(messages) is messages


def test_nothing_to_strip_returns_the_same_tuple():
    messages = (S("s"), U("q"), A("plain"), Message("assistant", ()), U("q2"))
    assert strip_thinking(messages) is messages


def test_user_text_with_think_tags_untouched():
    messages = (U("<think>x</think>"), A("a"), U("q2"))
    assert strip_thinking(messages) is messages
