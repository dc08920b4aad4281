import pytest

from sglang_rksc.programs import gsm8k


@pytest.mark.parametrize(
    "text, expected",
    [("18", "18"), ("$1,234", "1234"), ("18.00", "18"), ("2.50", "2.5"), ("-3", "-3"), ("7.", "7"), ("abc", None)],
)
def test_normalize_number(text, expected):
    assert gsm8k.normalize_number(text) == expected


def test_gold_answer_reads_the_number_after_hashes():
    assert gsm8k.gold_answer("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18") == "18"
    assert gsm8k.gold_answer("... #### 1,000") == "1000"
    with pytest.raises(ValueError):
        gsm8k.gold_answer("no final answer here")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "18"),
        ("The answer is $1,250.00 in total, not 7", "1250"),
        ("So she has 5 apples and then 3 more: 8", "8"),
        ("#### 42\nsome trailing 17", "42"),
        ("Answer: 12 (after 3 steps)", "12"),
        ("no numbers at all", None),
    ],
)
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_weighted_vote():
    assert gsm8k.weighted_vote(["3", "4", "3"]) == "3"
    # Weight beats count.
    assert gsm8k.weighted_vote(["3", "4", "3"], [1, 5, 1]) == "4"
    # Ties go to the answer seen first; None does not vote.
    assert gsm8k.weighted_vote([None, "7", "8"], [9, 2, 2]) == "7"
    assert gsm8k.weighted_vote([None, None]) is None
    with pytest.raises(ValueError):
        gsm8k.weighted_vote(["1"], [1, 2])


def test_load_problems_slices_the_shipped_test_split():
    first = gsm8k.load_problems(0, 2)
    assert [p.index for p in first] == [0, 1]
    assert first[0].answer == "18" and first[0].question.startswith("Janet")
    report = gsm8k.load_problems(300, 3)
    assert [p.index for p in report] == [300, 301, 302]
    all_rows = gsm8k.load_problems()
    assert len(all_rows) == 1319 and all(p.answer is not None for p in all_rows)
    with pytest.raises(ValueError):
        gsm8k.load_problems(1318, 5)
    with pytest.raises(ValueError):
        gsm8k.load_problems(-1, 1)
