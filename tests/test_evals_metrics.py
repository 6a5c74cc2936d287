"""Metrics, votes and rewards on hand-checked cases."""

import pytest

from agent.evals import metrics as M
from agent.trajectory import Trajectory


@pytest.mark.parametrize("pred, gold", [
    ("1,000", "1000.0"), ("$5", "5"), ("5.", "5"), ("50%", "50"), ("-3", "−3"), ("The answer is 72.", "72"),
    ("0.50", ".5"), ("$1,000,000", "1000000"),
])
def test_numeric_forms_are_equal(pred, gold):
    assert M.is_correct(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("1,001", "1000"), ("9.11", "9.9"), ("72 or 73", "72"), ("", "0"), (None, "1"), ("I don't know", "5"),
])
def test_numeric_mismatches(pred, gold):
    assert not M.is_correct(pred, gold)


def test_text_answers_use_squad_normalisation_and_aliases():
    assert M.normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert M.normalize_answer("An apple, a day") == "apple day"
    assert M.is_correct("the Amsterdam.", "Amsterdam")
    assert M.is_correct("Ibuka", ["Masaru Ibuka", "Ibuka"])
    assert not M.is_correct("Masaru", ["Masaru Ibuka", "Ibuka"])
    assert M.exact_match("AMSTERDAM", ["Paris", "amsterdam"]) == 1.0
    assert M.exact_match("Amsterdam, NL", "Amsterdam") == 0.0


def test_token_f1_is_squad_f1_best_over_aliases():
    # pred tokens {masaru, ibuka, and, sony}, gold {masaru, ibuka}: P = 2/4, R = 1 -> F1 = 2/3
    assert M.token_f1("Masaru Ibuka and Sony", "Masaru Ibuka") == pytest.approx(2 / 3)
    assert M.token_f1("Ibuka", ["Akio Morita", "Masaru Ibuka"]) == pytest.approx(2 / 3)
    assert M.token_f1("the", "a") == 1.0  # both normalise to nothing
    assert M.token_f1("Paris", "Amsterdam") == 0.0
    assert M.token_f1(None, "x") == 0.0


@pytest.mark.parametrize("text", [
    "I don't know.", "I do not know the answer", "I’m not sure", "The answer cannot be determined",
    "There is not enough information.", "Unknown", "This question is unanswerable", "I can't tell",
])
def test_refusals(text):
    assert M.is_refusal(text)


@pytest.mark.parametrize("text", ["Paris", "known for its canals", "Knowledge is power", "", None, "5"])
def test_not_refusals(text):
    assert not M.is_refusal(text)


def test_unanswerable_gold_is_matched_by_a_refusal_only():
    assert M.is_correct("I don't know", "blue", answerable=False)
    assert not M.is_correct("blue", "blue", answerable=False)


def test_majority_vote_groups_numeric_forms_and_normalised_text():
    assert M.majority_vote(["1,000", "7", "1000.0", "$1000"]) == ("1,000", 3)
    assert M.majority_vote(["The Paris", "paris!", "Rome"]) == ("The Paris", 2)


def test_majority_vote_ties_go_to_the_earliest_answer_and_none_abstains():
    assert M.majority_vote(["b", "a", "a", "b"]) == ("b", 2)
    assert M.majority_vote([None, "x", "", "y"]) == ("x", 1)
    assert M.majority_vote([None, None, "  "]) == (None, 0)
    assert M.majority_vote([]) == (None, 0)


def test_pass_at_k_matches_the_unbiased_estimator():
    assert M.pass_at_k(5, 0, 3) == 0.0
    assert M.pass_at_k(5, 5, 1) == 1.0
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert M.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert M.pass_at_k(3, 2, 2) == 1.0  # n - c < k
    with pytest.raises(ValueError):
        M.pass_at_k(2, 1, 3)


def test_rewards_read_answer_tags_trajectories_and_chat_messages():
    completions = [
        "let me think <answer_start>1,000<answer_end>",
        "no tags, just 999",
        [{"role": "assistant", "content": "<answer_start>Ibuka<answer_end>"}],
        Trajectory(question="q", answer="1000"),
    ]
    answers = ["1000", "1000", ["Masaru Ibuka", "Ibuka"], "1000.0"]
    assert M.accuracy_reward(completions, answers) == [1.0, 0.0, 1.0, 1.0]
    assert M.exact_match_reward(completions[2:3], answers[2:3]) == [1.0]
    f1 = M.f1_reward(["<answer>Masaru Ibuka, Sony</answer>"], ["Masaru Ibuka"], syntax="search-r1")
    assert f1 == [pytest.approx(0.8)]
    assert M.refusal_reward(["<answer_start>I don't know<answer_end>", "x"], ["", ""]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        M.accuracy_reward(["a", "b"], ["a"])


def test_answer_key_is_canonical():
    assert M.answer_key("1,000") == M.answer_key("1000.00") == "1000"
    assert M.answer_key(" ") is None
    assert M.parse_number("about 3,500 people", whole=False) == 3500
    assert M.parse_number("about 3,500 people") is None
