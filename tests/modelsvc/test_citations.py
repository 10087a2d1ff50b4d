from __future__ import annotations

from modelsvc.citations import ParsedClaim, parse_answer


def test_it_splits_sentences_and_reads_their_citations() -> None:
    parsed = parse_answer("Aspirin reduced strokes [1]. Bleeding rose in older adults [2, 3].",
                          n_passages=3)

    assert parsed.claims == [ParsedClaim("Aspirin reduced strokes.", [1]),
                             ParsedClaim("Bleeding rose in older adults.", [2, 3])]
    assert parsed.removed_citations == 0


def test_citations_to_passages_not_given_are_removed_and_counted() -> None:
    parsed = parse_answer("Mortality fell by a third [2][7]. Costs rose sharply [9].", 3)

    assert parsed.claims[0].citations == [2]
    assert parsed.claims[1].citations == []
    assert parsed.removed_citations == 2
    assert "[7]" not in parsed.cleaned_text and "[9]" not in parsed.cleaned_text
    assert "[2]" in parsed.cleaned_text


def test_citations_after_the_full_stop_belong_to_the_sentence_before() -> None:
    parsed = parse_answer("Statins lowered LDL cholesterol. [1] They did not change mortality "
                          "in this trial. [2]", 2)

    assert [c.citations for c in parsed.claims] == [[1], [2]]


def test_ranges_lists_and_bullets_are_understood() -> None:
    parsed = parse_answer("Summary:\n- Three trials agree on benefit [1-3].\n- One disagrees "
                          "strongly here [4; 1].", 4)

    assert parsed.claims == [ParsedClaim("Three trials agree on benefit.", [1, 2, 3]),
                             ParsedClaim("One disagrees strongly here.", [4, 1])]


def test_an_empty_answer_has_no_claims() -> None:
    assert parse_answer("", 3).claims == []
