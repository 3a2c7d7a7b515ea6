"""The toy reasoning task behind the shipped triple: sums of four numbers, answered directly or worked.

A problem is four whole numbers of two or three digits, `Q: 347+58+906+71\n`. A solution starts
with its style word: `Answer: 1382\n` (a direct guess) or `Steps: 347+58=405, 405+906=1311,
1311+71=1382. Check: 1382-71=1311. Answer: 1382\n` (running sums, then a check of the last step).
The pretraining corpus mixes the two styles, 70% direct answers that are right only 70% of the
time (a slipped digit otherwise) and 30% worked solutions that are always right: base models mostly
guess, RL with a correctness reward teaches the worked style. Problems split into training and
held-out sets by a hash of their text, so no held-out problem is ever trained on. This module is
plain Python (no torch, no llama.cpp): the training recipe loads it by path and the demo, the
evaluation and the tests import it.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

N_OPERANDS = 4
DIRECT_SHARE = 0.7        # share of direct answers in the pretraining corpus
DIRECT_RIGHT = 0.7        # share of corpus direct answers that are right
HELD_OUT_BUCKETS = 16     # one bucket of the question hash in this many is held out
STOP = "\n"               # a solution ends with its answer line; the EOS token follows in training
_ANSWER = re.compile(r"Answer: (-?\d+)")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]

    @property
    def question(self) -> str:
        return "+".join(str(n) for n in self.operands)

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def prompt(self) -> str:
        return f"Q: {self.question}\n"

    @property
    def held_out(self) -> bool:
        return zlib.crc32(self.question.encode()) % HELD_OUT_BUCKETS == 0


def _operand(rng: random.Random) -> int:
    digits = rng.choice((2, 3))
    return rng.randrange(10 ** (digits - 1), 10 ** digits)


def problems(seed: int, n: int, *, held_out: bool) -> list[Problem]:
    """`n` distinct problems from the held-out or the training side of the split, fixed by `seed`."""
    rng = random.Random(f"toy-sums-{seed}-{held_out}")
    out: list[Problem] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < n:
        problem = Problem(tuple(_operand(rng) for _ in range(N_OPERANDS)))
        if problem.held_out == held_out and problem.operands not in seen:
            seen.add(problem.operands)
            out.append(problem)
    return out


def direct_solution(answer: int) -> str:
    return f"Answer: {answer}\n"


def worked_solution(problem: Problem) -> str:
    total, steps = problem.operands[0], []
    for n in problem.operands[1:]:
        steps.append(f"{total}+{n}={total + n}")
        total += n
    last = problem.operands[-1]
    return f"Steps: {', '.join(steps)}. Check: {total}-{last}={total - last}. Answer: {total}\n"


def slipped(answer: int, rng: random.Random) -> int:
    """The answer with one digit changed: the kind of error a direct guess makes."""
    digits = list(str(answer))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")]
    digits[i] = rng.choice(choices)
    return int("".join(digits))


def corpus_solution(problem: Problem, rng: random.Random) -> str:
    """One pretraining completion for `problem`: the corpus's mix of styles and direct-answer slips."""
    if rng.random() >= DIRECT_SHARE:
        return worked_solution(problem)
    answer = problem.answer if rng.random() < DIRECT_RIGHT else slipped(problem.answer, rng)
    return direct_solution(answer)


def extract_answer(completion: str) -> int | None:
    """The number of the first `Answer: N` line of a completion, or None."""
    match = _ANSWER.search(completion)
    return int(match.group(1)) if match else None


def is_correct(problem: Problem, completion: str) -> bool:
    return extract_answer(completion) == problem.answer


def style(completion: str) -> str:
    """'worked', 'direct' or 'other', from the completion's first word."""
    text = completion.lstrip()
    if text.startswith("Steps:"):
        return "worked"
    if text.startswith("Answer:"):
        return "direct"
    return "other"
