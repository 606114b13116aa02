"""Topic names and topic patterns, shared by pub/sub and the event log.

A *topic* is one or more dot-separated words, e.g. ``supervisor.root.worker1.child_exited``.
A word is 1+ characters from ``A-Z a-z 0-9 _ - : @ / + = $``; topics are at most
:data:`MAX_TOPIC_LENGTH` characters (the event log stores them inside LMDB keys).

A *pattern* is a topic in which a whole word may also be a wildcard (AMQP-style):

* ``*`` matches exactly one word;
* ``#`` matches zero or more words.

``*``/``#`` inside a word (``a*b``) is refused rather than read literally, so a pattern always
means what it looks like. :func:`compile_pattern` validates once and returns a frozen
:class:`TopicPattern`; :meth:`TopicPattern.matches` is the per-event hot path and does no
validation: it assumes its argument is a valid topic (validate producers with
:func:`validate_topic`).
"""

from __future__ import annotations

import enum
import functools
import re

import msgspec

from prismatic._errors import TopicError

__all__ = [
    "MAX_TOPIC_LENGTH",
    "PatternKind",
    "TopicPattern",
    "compile_pattern",
    "topic_matches",
    "validate_topic",
]

MAX_TOPIC_LENGTH = 255

_WORD = re.compile(r"[A-Za-z0-9_\-:@/+=$]+")
_WORD_CHARS = "A-Z a-z 0-9 _ - : @ / + = $"


class PatternKind(enum.Enum):
    """How a compiled pattern is matched; chosen at compile time for speed."""

    EXACT = "exact"  # no wildcard: string equality
    SUBTREE = "subtree"  # literal words then a single trailing '#': equality or prefix + '.'
    ANY = "any"  # only '#' words: matches every topic
    GENERAL = "general"  # anything else: a compiled regular expression


class TopicPattern(msgspec.Struct, frozen=True):
    """A validated, compiled topic pattern.

    Invariants: ``words`` is ``pattern.split('.')``, each a valid word, ``*`` or ``#``;
    every topic matched by the pattern starts with ``literal_prefix`` (so it is safe as a
    ZeroMQ SUB prefix filter or as the start of an index range scan), and it is the longest
    such string derivable from the leading literal words.
    """

    pattern: str
    words: tuple[str, ...]
    literal_prefix: str
    kind: PatternKind
    # Only for GENERAL: matched against '.' + topic, so each word piece can own its dot.
    regex: re.Pattern[str] | None = None

    def matches(self, topic: str) -> bool:
        """True if ``topic`` (assumed valid) is matched by this pattern."""
        kind = self.kind
        if kind is PatternKind.EXACT:
            return topic == self.pattern
        if kind is PatternKind.SUBTREE:
            prefix = self.literal_prefix
            return topic == prefix or (
                topic.startswith(prefix) and topic[len(prefix) : len(prefix) + 1] == "."
            )
        if kind is PatternKind.ANY:
            return True
        assert self.regex is not None
        return self.regex.fullmatch("." + topic) is not None


def _split_words(field: str, value: object, *, wildcards: bool) -> list[str]:
    if not isinstance(value, str):
        raise TopicError(field, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise TopicError(field, value, "must not be empty")
    if len(value) > MAX_TOPIC_LENGTH:
        raise TopicError(field, value, f"longer than {MAX_TOPIC_LENGTH} characters")
    words = value.split(".")
    for position, word in enumerate(words):
        if not word:
            raise TopicError(field, value, f"empty word at position {position}")
        if wildcards and word in ("*", "#"):
            continue
        if _WORD.fullmatch(word) is None:
            hint = " ('*' and '#' must be whole words)" if ("*" in word or "#" in word) else ""
            raise TopicError(
                field, value, f"word {word!r} has a character outside {_WORD_CHARS}{hint}"
            )
    return words


@functools.lru_cache(maxsize=4096)
def validate_topic(topic: str) -> str:
    """Return ``topic`` unchanged if it is a valid topic, else raise :class:`TopicError`.

    Cached, so validating the same few topics on every event costs a dict lookup.
    """
    _split_words("topic", topic, wildcards=False)
    return topic


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> TopicPattern:
    """Validate and compile ``pattern``; raise :class:`TopicError` naming it if malformed."""
    words = _split_words("pattern", pattern, wildcards=True)
    literal: list[str] = []
    for word in words:
        if word in ("*", "#"):
            break
        literal.append(word)
    rest = words[len(literal) :]
    prefix = ".".join(literal)
    if not rest:
        return TopicPattern(pattern, tuple(words), prefix, PatternKind.EXACT)
    if all(word == "#" for word in rest):
        # '#' may match zero words, so the prefix carries no trailing dot.
        kind = PatternKind.ANY if not literal else PatternKind.SUBTREE
        if kind is PatternKind.SUBTREE and len(rest) == 1:
            return TopicPattern(pattern, tuple(words), prefix, kind)
        if kind is PatternKind.ANY:
            return TopicPattern(pattern, tuple(words), "", kind)
    elif literal:
        # At least one more word must follow the literal ones, hence the dot.
        prefix += "."
    pieces = []
    for word in words:
        if word == "*":
            pieces.append(r"\.[^.]+")
        elif word == "#":
            pieces.append(r"(?:\.[^.]+)*")
        else:
            pieces.append(r"\." + re.escape(word))
    regex = re.compile("".join(pieces))
    return TopicPattern(pattern, tuple(words), prefix, PatternKind.GENERAL, regex)


def topic_matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` matches ``pattern``; both are validated (results are cached)."""
    return compile_pattern(pattern).matches(validate_topic(topic))
