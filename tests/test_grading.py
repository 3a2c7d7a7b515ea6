"""Answer extraction and equivalence on hand-written pairs: equivalent forms and near misses."""

import pytest

from rast_gguf.grading import extract_answer, grade, is_equivalent, last_boxed, normalize

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "\\frac34"),
    ("1/2", "\\frac{1}{2}"),
    ("-\\frac{2}{3}", "-2/3"),
    ("1,000", "1000"),
    ("\\$12.50", "12.5"),
    ("50\\%", "0.5"),
    ("90^\\circ", "90"),
    ("10 \\text{ cm}", "10"),
    ("x = 5", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("3.0", "3"),
    ("1e3", "1000"),
    ("\\text{Monday}", "Monday"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{3}", "0.33"),
    ("1000", "100"),
    ("(1, 2)", "(2, 1)"),
    ("(1, 2)", "(1, 2, 3)"),
    ("2\\sqrt{2}", "\\sqrt{2}"),
    ("x^2+1", "(x+1)^2"),
    ("-5", "5"),
    ("Monday", "Tuesday"),
    ("\\frac{1}{0}", "1"),
    ("", "0"),
]


@pytest.mark.parametrize("answer,reference", EQUIVALENT)
def test_equivalent_forms(answer, reference):
    assert is_equivalent(answer, reference)
    assert is_equivalent(reference, answer)


@pytest.mark.parametrize("answer,reference", NOT_EQUIVALENT)
def test_non_equivalent_forms(answer, reference):
    assert not is_equivalent(answer, reference)


def test_none_is_wrong():
    assert not is_equivalent(None, "1")


@pytest.mark.parametrize("text,want", [
    ("so the total is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{3}, corrected: \\boxed{4}", "4"),
    ("nested \\boxed{\\sqrt{\\frac{a}{b}}} end", "\\sqrt{\\frac{a}{b}}"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("Thus the answer is 17.", "17"),
    ("We get 3 apples, then 5 more, so 8", "8"),
    ("a total of 1,250 dollars", "1250"),
    ("no number here", None),
    ("unbalanced \\boxed{12", "12"),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_last_boxed_without_braces():
    assert last_boxed("\\boxed 7") == "7"


def test_normalize_strips_presentation_only():
    assert normalize(" $\\left(3,\\!000\\right)$. ") == "(3000)"
    assert normalize("(1, 2)") == "(1,2)"


def test_grade_end_to_end():
    assert grade("... so x = \\boxed{\\dfrac{6}{4}}", "\\frac{3}{2}")
    assert grade("#### 1,024", "1024")
    assert not grade("#### 1,025", "1024")
    assert not grade("I do not know", "1024")
