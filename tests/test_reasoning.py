"""Table tests of splitting a Thinking model's output into reasoning and content, and a
property test: any way of cutting the output into pieces gives the same result."""

from __future__ import annotations

import random

import pytest

from vlserve.chat.reasoning import (
    INLINE_PREFIX,
    ReasoningSplitter,
    inline,
    split_reasoning,
    template_opens_thinking,
)

R, C = "reasoning", "content"

# name: (output, in_reasoning, expected reasoning, expected content)
CASES = {
    # The template opened <think>: the usual Qwen3-VL Thinking output.
    "template opened": ("\nLet me look.\n</think>\n\nA cat.", True, "Let me look.", "A cat."),
    "template opened, no newlines": ("hmm</think>ok", True, "hmm", "ok"),
    "model repeats <think>": ("<think>\nhmm\n</think>\n\nok", True, "hmm", "ok"),
    "model repeats <think> after whitespace": ("\n<think>hmm</think>ok", True, "hmm", "ok"),
    "only the first <think> is a repeat": ("<think><think>x</think>y", True, "<think>x", "y"),
    "close immediately": ("</think>\n\nanswer", True, "", "answer"),
    "close immediately after newline": ("\n</think>\n\nanswer", True, "", "answer"),
    "no close: all reasoning": ("\nstill thinking about it", True, "still thinking about it", ""),
    "no close, trailing partial tag": ("thinking</th", True, "thinking</th", ""),
    "content empty after close": ("hmm\n</think>\n\n", True, "hmm", ""),
    "empty output, opened": ("", True, "", ""),
    "whitespace only, opened": ("\n \n", True, "", ""),
    "inner whitespace kept": ("a\n\nb \n</think>c", True, "a\n\nb", "c"),
    # The model opens <think> itself.
    "model opens": ("<think>\nhmm\n</think>\n\nok", False, "hmm", "ok"),
    "model opens after whitespace": ("\n\n<think>hmm</think>ok", False, "hmm", "ok"),
    "model opens, never closes": ("<think>hmm", False, "hmm", ""),
    "model opens, empty block": ("<think>\n\n</think>\n\nok", False, "", "ok"),
    # No reasoning at all.
    "plain answer": ("Just an answer.", False, "", "Just an answer."),
    "plain answer keeps leading whitespace": ("\n Hi", False, "", "\n Hi"),
    "empty output": ("", False, "", ""),
    "whitespace only": (" \n", False, "", " \n"),
    "<think> later is literal": ("Use <think> tags. </think>", False, "",
                                 "Use <think> tags. </think>"),
    "output is a tag prefix": ("<thi", False, "", "<thi"),
    "<thinking> is not <think>": ("<thinking>x", False, "", "<thinking>x"),
    # Look-alike tags and what follows the block.
    "</thinking> is not </think>": ("a </thinking> b</think>c", True, "a </thinking> b", "c"),
    "</think without >": ("a </think b", True, "a </think b", ""),
    "content keeps later tags verbatim": ("r</think>\n\nx <think>y</think> z\n", True, "r",
                                          "x <think>y</think> z\n"),
    "second block is content": ("<think>a</think>b<think>c</think>d", False, "a",
                                "b<think>c</think>d"),
    # All whitespace after </think> goes, even an answer's indentation (as llama.cpp does).
    "content trailing whitespace kept": ("r</think>\n\n  indented\n\n", True, "r", "indented\n\n"),
    "almost-close then close": ("a </</think>b", True, "a </", "b"),
    # Unicode.
    "emoji and CJK": ("\n思考中🤔…\n</think>\n\n答案是🐱。", True, "思考中🤔…", "答案是🐱。"),
    "ideographic space is whitespace": ("\u3000x</think>\u3000y", True, "x", "y"),
}


def feed_all(pieces: list[str], in_reasoning: bool) -> list[tuple[str, str]]:
    """Feed pieces one by one and finish; the merged result of all calls."""
    splitter = ReasoningSplitter(in_reasoning)
    out: list[tuple[str, str]] = []
    for piece in pieces:
        out += splitter.feed(piece)
    out += splitter.finish()
    return merge(out)


def merge(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        assert text, "empty pieces are dropped"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def expected_pieces(reasoning: str, content: str) -> list[tuple[str, str]]:
    return [(k, t) for k, t in ((R, reasoning), (C, content)) if t]


@pytest.mark.parametrize("name", CASES)
def test_split_reasoning(name):
    text, in_reasoning, reasoning, content = CASES[name]
    assert split_reasoning(text, in_reasoning) == (reasoning, content)


@pytest.mark.parametrize("name", CASES)
def test_streaming_matches_whole_at_every_cut(name):
    text, in_reasoning, reasoning, content = CASES[name]
    want = expected_pieces(reasoning, content)
    assert feed_all([text], in_reasoning) == want
    for i in range(len(text) + 1):
        assert feed_all([text[:i], text[i:]], in_reasoning) == want, i
    for i in range(len(text) + 1):  # two cuts: a tag split in three
        for j in range(i, len(text) + 1):
            assert feed_all([text[:i], text[i:j], text[j:]], in_reasoning) == want, (i, j)
    assert feed_all(list(text), in_reasoning) == want


@pytest.mark.parametrize("name", CASES)
def test_streaming_matches_whole_random_splits(name):
    text, in_reasoning, reasoning, content = CASES[name]
    want = expected_pieces(reasoning, content)
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert feed_all(pieces, in_reasoning) == want, pieces


def test_held_back_until_resolved():
    s = ReasoningSplitter(in_reasoning=True)
    assert s.feed("\n") == []
    assert s.feed("Hmm") == [(R, "Hmm")]
    assert s.feed(" </th") == []          # could be the close tag
    assert s.feed("ink>") == []           # it was; the answer has not started
    assert s.feed("\n\n") == []           # whitespace after </think> is dropped
    assert s.feed("Yes") == [(C, "Yes")]
    assert s.feed(" </think>") == [(C, " </think>")]  # verbatim after the block
    assert s.finish() == []


def test_not_a_tag_after_all_is_released():
    s = ReasoningSplitter(in_reasoning=True)
    assert s.feed("a </thi") == [(R, "a")]
    assert s.feed("s") == [(R, " </this")]


def test_start_is_held_while_it_could_be_think():
    s = ReasoningSplitter(in_reasoning=False)
    assert s.feed(" <th") == []
    assert s.feed("e") == [(C, " <the")]
    s = ReasoningSplitter(in_reasoning=False)
    assert s.feed("<th") == []
    assert s.feed("ink>x") == [(R, "x")]


def test_finish_releases_held_text():
    s = ReasoningSplitter(in_reasoning=True)
    assert s.feed("thinking </thi") == [(R, "thinking")]
    assert s.finish() == [(R, " </thi")]
    s = ReasoningSplitter(in_reasoning=False)
    assert s.feed("<thi") == []
    assert s.finish() == [(C, "<thi")]


def test_one_feed_can_give_both_kinds():
    s = ReasoningSplitter(in_reasoning=True)
    assert s.feed("a</think>\n\nb") == [(R, "a"), (C, "b")]


@pytest.mark.parametrize("prompt, want", [
    ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n", True),
    ("<|im_start|>assistant\n<think>", True),
    ("<|im_start|>assistant\n<think>\n\n  ", True),
    ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # thinking disabled
    ("<|im_start|>assistant\n<think>x</think>\n", False),
    ("", False),
])
def test_template_opens_thinking(prompt, want):
    assert template_opens_thinking(prompt) is want


@pytest.mark.parametrize("reasoning, content, opened, want", [
    ("hmm", "ok", True, "<think>\nhmm\n</think>\n\nok"),
    ("hmm", "ok", False, "<think>\nhmm\n</think>\n\nok"),
    ("", "ok", False, "ok"),
    ("", "ok", True, "<think>\n\n</think>\n\nok"),  # the template's block, empty
    ("hmm", "", True, "<think>\nhmm\n</think>\n\n"),
])
def test_inline(reasoning, content, opened, want):
    assert inline(reasoning, content, opened) == want


def test_inline_rebuilds_the_models_layout():
    output = "Let me see.\n</think>\n\nA cat."  # after the template's "<think>\n"
    assert inline(*split_reasoning(output, True), True) == INLINE_PREFIX + output
    assert INLINE_PREFIX == "<think>\n"
