"""Stop strings over every way a text can arrive in pieces (every split into tokens, UTF-8 cut
mid-character): no part of a stop string is ever emitted, and all the text before it is. The
checker is also run on a filter that holds back one character too few, and must catch it."""

import itertools

import pytest

from rast_gguf.generate import TextSteps, _StopStringFilter


def all_splits(data):
    """Every way to cut `data` into non-empty consecutive pieces."""
    n = len(data)
    for cuts in itertools.product([False, True], repeat=n - 1):
        pieces, start = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                pieces.append(data[start:i])
                start = i
        pieces.append(data[start:])
        yield pieces


def expected_output(text, stops):
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def check_text_steps(text, stops, pieces_of_bytes, filter_class=_StopStringFilter):
    """None if the pieces go through TextSteps correctly, else what went wrong."""
    pieces = list(pieces_of_bytes)
    model = FakeModel(pieces)
    steps = TextSteps(model, stop=stops, max_tokens=len(pieces), n_ctx=10**9)
    steps.stops = filter_class(stops)
    want, want_stop = expected_output(text, stops)
    emitted, finish = "", None
    for token in range(len(pieces)):
        out, finish = steps.push(token, token + 1)
        emitted += out
        if not want.startswith(emitted):
            return f"emitted {emitted!r}, which is not a prefix of {want!r} (a stop string leaked)"
        if finish:
            break
    if emitted != want:
        return f"emitted {emitted!r} in all, expected {want!r}"
    if (finish == "stop") != want_stop:
        return f"finish {finish!r}, a stop was {'' if want_stop else 'not '}expected"
    return None


class FakeModel:
    """Token i is the i-th byte piece; no end-of-generation tokens."""

    def __init__(self, pieces):
        self.pieces = pieces

    def is_eog(self, token):
        return False

    def token_bytes(self, token):
        return self.pieces[token]


class HoldsOneTooFew(_StopStringFilter):
    """The bug the suite must catch: one character less held back than a stop's possible start."""

    def _held_back(self):
        return max(super()._held_back() - 1, 0)


CASES = [
    ("Hi world, by", ["w"]),
    ("Hi world, by", ["wo"]),
    ("Hi world, by", ["orl"]),
    ("Hi world, by", ["rld,"]),
    ("aaab aab ab", ["aab"]),            # a prefix that restarts inside itself
    ("xyxyxz tail", ["xyxz"]),
    ("one two th", ["two", "t", "ne"]),  # several stops; the earliest one wins
    ("abcabd", ["abd", "ca"]),
    ("no stop here", ["zz", "q"]),
    ("caf\u00e9 \u20ac5", ["\u20ac"]),      # multi-byte stop, cut anywhere in its bytes
    ("n\u00efv \U0001F600!", ["\U0001F600!"]),
    ("\u00e9\u00e9\u00e8 x", ["\u00e9\u00e8"]),
]


@pytest.mark.parametrize("text, stops", CASES)
def test_every_split_into_text_pieces(text, stops):
    failures = []
    for pieces in all_splits(text):
        problem = check_text_steps(text, stops, [p.encode() for p in pieces])
        if problem:
            failures.append((pieces, problem))
    assert not failures, f"{len(failures)} splits fail, e.g. {failures[0]}"


@pytest.mark.parametrize("text, stops", [c for c in CASES if len(c[0].encode()) > len(c[0])])
def test_every_split_into_byte_pieces_utf8_cut_mid_character(text, stops):
    data = text.encode()
    assert len(data) <= 16
    failures = []
    for pieces in all_splits(data):
        problem = check_text_steps(text, stops, pieces)
        if problem:
            failures.append((pieces, problem))
    assert not failures, f"{len(failures)} splits fail, e.g. {failures[0]}"


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_stops_of_one_to_four_characters(length):
    alphabet = "ab\u00e9"
    for stop in map("".join, itertools.product(alphabet, repeat=length)):
        for text in ("x\u00e9b" + stop + "y", stop + "t", "a" + stop[:-1] + "!" + stop):
            for pieces in all_splits(text) if len(text) <= 7 else [list(text), [text], [text[:3], text[3:]]]:
                assert check_text_steps(text, [stop], [p.encode() for p in pieces]) is None, (stop, text, pieces)


def test_the_checker_catches_a_filter_that_holds_back_one_too_few():
    caught = 0
    for text, stops in CASES:
        if expected_output(text, stops)[1]:
            caught += any(check_text_steps(text, stops, [p.encode() for p in pieces], HoldsOneTooFew)
                          for pieces in all_splits(text))
    assert caught >= 8  # every case with a stop string longer than one character


def test_stop_filter_flush_returns_held_text():
    f = _StopStringFilter(["END"])
    assert f.push("the EN") == ("the ", False)
    assert f.flush() == "EN"
