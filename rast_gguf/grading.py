"""Answer extraction and grading by mathematical equivalence, for `rast eval` and `rast analyze`.

`extract_answer(text)` takes the final answer out of a completion, in the reference's order: the
last `\\boxed{...}` (braces matched, `\\fbox` too), else the last `#### N` (GSM8K), else "the answer
is X", else the last number. `normalize(answer)` strips what does not change a value (`$`, spaces,
`\\left`/`\\right`, `\\text{units}`, thousands separators, trailing dots, `\\dfrac` spelt
`\\frac`, degrees). `is_equivalent(answer, reference)` is True when the normalized strings match,
when both parse as the same number (fractions, percents, scientific notation), when tuples match
element by element, or when sympy proves the difference zero after a plain LaTeX-to-sympy rewrite
(given `timeout` seconds; a timeout or a parse failure grades as not equivalent, never raises).
"""

from __future__ import annotations

import math
import re
import signal
import threading
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_SYMPY_TIMEOUT = 2.0


def _braced(text: str, start: int) -> str | None:
    """The contents of the brace group opening at text[start] == '{', or None when unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def last_boxed(text: str) -> str | None:
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        end = match.end()
        if end < len(text) and text[end] == "{":
            inner = _braced(text, end)
            if inner is not None:
                best = inner
        else:  # "\boxed 5"
            word = re.match(r"[^\s$]+", text[end:])
            if word:
                best = word.group(0)
    return best


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    stated = re.findall(r"[Tt]he (?:final )?answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", text)
    if stated:
        return stated[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def normalize(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s) if re.fullmatch(r"\\text\{[^{}]*\}", s) else s
    s = re.sub(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}", "", s)  # units: \text{ cm}
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("$", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "%").replace("\\$", "")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(\d),(?=\d{3}(?!\d))", r"\1", s)  # 1,000 -> 1000 (not "1,2" tuples)
    s = s.rstrip(".")
    if s.startswith(("x=", "y=", "k=", "n=")) and "," not in s:
        s = s[2:]
    return s


def _as_number(s: str) -> Fraction | float | None:
    s = s.replace("{", "(").replace("}", ")") if s.startswith("\\frac") else s
    m = re.fullmatch(r"\\frac\((-?\d+)\)\((-?\d+)\)", s) or re.fullmatch(r"\(?(-?\d+)\)?/\(?(-?\d+)\)?", s)
    if m:
        den = int(m.group(2))
        return Fraction(int(m.group(1)), den) if den else None
    m = re.fullmatch(r"-\\frac\((\d+)\)\((\d+)\)", s)
    if m:
        den = int(m.group(2))
        return -Fraction(int(m.group(1)), den) if den else None
    percent = s.endswith("%")
    core = s[:-1] if percent else s
    try:
        value = Fraction(core) if re.fullmatch(r"-?\d+(?:\.\d+)?", core) else float(core)
    except (ValueError, OverflowError):
        return None
    return value / 100 if percent else value


def _numbers_equal(a, b) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    a, b = float(a), float(b)
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _split_tuple(s: str) -> list[str] | None:
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        return _split_top_level(s[1:-1])
    return None


def _split_top_level(s: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in s:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def latex_to_sympy_text(s: str) -> str:
    """A plain rewrite of common LaTeX into sympy's input syntax (no full LaTeX parser needed)."""
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("\\infty", "oo")
    for _ in range(5):  # nested \frac{..}{..} and \sqrt{..}
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\frac(\d)(\d)", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\[([^{}]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
        s = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", s)
    s = s.replace("{", "(").replace("}", ")").replace("^", "**").replace("\\", "")
    return s


class _Timeout(Exception):
    pass


def _with_timeout(fn, seconds: float):
    """fn() under SIGALRM on the main thread (sympy cannot be interrupted otherwise); elsewhere plainly."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return fn()

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sympy_equal(a: str, b: str, timeout: float) -> bool:
    try:
        import sympy
        from sympy.parsing.sympy_parser import (
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )
    except ImportError:
        return False
    transformations = standard_transformations + (implicit_multiplication_application,)

    def check() -> bool:
        x = parse_expr(latex_to_sympy_text(a), transformations=transformations, evaluate=True)
        y = parse_expr(latex_to_sympy_text(b), transformations=transformations, evaluate=True)
        difference = sympy.simplify(x - y)
        return difference == 0 or (difference.is_number and abs(complex(difference.evalf())) < 1e-9)

    try:
        return bool(_with_timeout(check, timeout))
    except Exception:  # noqa: BLE001 (sympy raises many kinds on odd input; odd input is "not equal")
        return False


def is_equivalent(answer: str | None, reference: str, *, timeout: float = _SYMPY_TIMEOUT) -> bool:
    if answer is None:
        return False
    a, b = normalize(str(answer)), normalize(str(reference))
    if a == b:
        return True
    if not a or not b:
        return False
    ta, tb = _split_tuple(a), _split_tuple(b)
    if ta is not None or tb is not None:
        return (ta is not None and tb is not None and len(ta) == len(tb)
                and all(is_equivalent(x, y, timeout=timeout) for x, y in zip(ta, tb)))
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb)
    return _sympy_equal(a, b, timeout)


def grade(completion: str, reference: str, *, timeout: float = _SYMPY_TIMEOUT) -> bool:
    """True when the completion's extracted answer is equivalent to the reference answer."""
    return is_equivalent(extract_answer(completion), reference, timeout=timeout)
