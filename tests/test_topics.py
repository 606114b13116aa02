"""Topic grammar: examples, validation errors, and properties against a reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic._errors import PrismaticError, TopicError
from prismatic._topics import (
    MAX_TOPIC_LENGTH,
    PatternKind,
    compile_pattern,
    topic_matches,
    validate_topic,
)


def reference_match(pattern_words: list[str], topic_words: list[str]) -> bool:
    """Obviously-correct recursive matcher the fast one is checked against."""
    if not pattern_words:
        return not topic_words
    head, rest = pattern_words[0], pattern_words[1:]
    if head == "#":
        return any(reference_match(rest, topic_words[i:]) for i in range(len(topic_words) + 1))
    if not topic_words:
        return False
    if head == "*" or head == topic_words[0]:
        return reference_match(rest, topic_words[1:])
    return False


# A tiny alphabet so that random patterns and topics actually share words.
words = st.sampled_from(["a", "b", "c", "ab", "x-1", "n@h"])
topics = st.lists(words, min_size=1, max_size=6)
patterns = st.lists(st.one_of(words, st.just("*"), st.just("#")), min_size=1, max_size=6)


@settings(max_examples=1000, deadline=None)
@given(patterns, topics)
def test_matches_agrees_with_reference(pattern_words: list[str], topic_words: list[str]) -> None:
    pattern = ".".join(pattern_words)
    topic = ".".join(topic_words)
    compiled = compile_pattern(pattern)
    expected = reference_match(pattern_words, topic_words)
    assert compiled.matches(topic) is expected
    assert topic_matches(pattern, topic) is expected
    if expected:
        # The prefix invariant that makes SUB filters and index range scans safe.
        assert topic.startswith(compiled.literal_prefix)


@settings(max_examples=500, deadline=None)
@given(patterns)
def test_literal_prefix_is_longest_from_literal_words(pattern_words: list[str]) -> None:
    compiled = compile_pattern(".".join(pattern_words))
    literal = []
    for word in pattern_words:
        if word in ("*", "#"):
            break
        literal.append(word)
    assert compiled.literal_prefix.rstrip(".") == ".".join(literal)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("supervisor.root.worker1.restarted", "supervisor.root.worker1.restarted", True),
        ("supervisor.*.worker1.restarted", "supervisor.root.worker1.restarted", True),
        ("supervisor.*.restarted", "supervisor.root.worker1.restarted", False),
        ("supervisor.#.restarted", "supervisor.root.worker1.restarted", True),
        ("supervisor.#", "supervisor", True),
        ("supervisor.#", "supervisorx.a", False),
        ("supervisor.#", "supervisor.a.b", True),
        ("#", "a", True),
        ("#.#", "a.b", True),
        ("*", "a.b", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y.c", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
    ],
)
def test_examples(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("pattern", "prefix", "kind"),
    [
        ("a.b.c", "a.b.c", PatternKind.EXACT),
        ("a.b.#", "a.b", PatternKind.SUBTREE),
        ("a.b.*", "a.b.", PatternKind.GENERAL),
        ("a.#.c", "a.", PatternKind.GENERAL),
        ("a.#.#", "a", PatternKind.GENERAL),
        ("#", "", PatternKind.ANY),
        ("*.b", "", PatternKind.GENERAL),
    ],
)
def test_literal_prefix_and_kind(pattern: str, prefix: str, kind: PatternKind) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.literal_prefix == prefix
    assert compiled.kind is kind


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("", "must not be empty"),
        ("a..b", "empty word at position 1"),
        (".a", "empty word at position 0"),
        ("a.", "empty word at position 1"),
        ("a b", "character outside"),
        ("a.b\x00", "character outside"),
        ("a*b", "must be whole words"),
        ("x" * (MAX_TOPIC_LENGTH + 1), "longer than"),
    ],
)
def test_bad_patterns_and_topics_are_refused_with_clear_messages(bad: str, needle: str) -> None:
    with pytest.raises(TopicError, match="invalid pattern") as excinfo:
        compile_pattern(bad)
    assert needle in str(excinfo.value)
    assert excinfo.value.value == bad
    with pytest.raises(TopicError, match="invalid topic"):
        validate_topic(bad)


def test_wildcards_are_not_valid_in_topics() -> None:
    for bad in ("a.*", "#", "a.#.b"):
        with pytest.raises(TopicError, match="invalid topic"):
            validate_topic(bad)


def test_error_is_in_the_tree_and_a_value_error() -> None:
    with pytest.raises(PrismaticError):
        compile_pattern("a..b")
    with pytest.raises(ValueError):
        compile_pattern(42)  # type: ignore[arg-type]


def test_compiled_pattern_is_frozen() -> None:
    compiled = compile_pattern("a.*")
    with pytest.raises(AttributeError):
        compiled.pattern = "b"  # type: ignore[misc]
