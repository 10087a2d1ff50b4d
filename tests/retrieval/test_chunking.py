"""Chunks stay inside one article, know their sections and fit the encoder's window."""

from __future__ import annotations

from retrieval.chunking import chunk_article, split_sentences


def words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def test_a_short_structured_abstract_is_one_chunk_listing_its_sections() -> None:
    [chunk] = chunk_article("Title", [("BACKGROUND", "Why we did it."), ("RESULTS", "It worked.")],
                            max_tokens=256, count_tokens=words)
    assert chunk.section == "BACKGROUND, RESULTS"
    assert chunk.text == "BACKGROUND: Why we did it. RESULTS: It worked."
    assert chunk.embedded_text("Title") == "Title\nBACKGROUND: Why we did it. RESULTS: It worked."


def test_a_long_abstract_splits_at_sentences_into_balanced_chunks_within_budget() -> None:
    sentence = "Patients in the treatment arm had fewer events than controls did overall."
    sections = [("METHODS", " ".join([sentence] * 12)), ("RESULTS", " ".join([sentence] * 12))]
    title = "A title of six words here"
    chunks = chunk_article(title, sections, max_tokens=128, count_tokens=words)
    assert 2 <= len(chunks) <= 3
    sizes = [len(chunk.text.split()) for chunk in chunks]
    assert all(size + len(title.split()) + 2 <= 128 for size in sizes)
    assert max(sizes) - min(sizes) <= 30  # no scrap at the end
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.text.rstrip().endswith(".") for c in chunks)  # whole sentences only
    assert " ".join(c.text for c in chunks).count(sentence) == 24


def test_a_sentence_longer_than_the_window_is_cut_at_words() -> None:
    chunks = chunk_article("", [("", " ".join(["word"] * 300))], max_tokens=128,
                           count_tokens=words)
    assert len(chunks) == 3
    assert sum(len(c.text.split()) for c in chunks) == 300


def test_sentences_do_not_break_after_common_abbreviations() -> None:
    assert split_sentences("HDL was 0.67 vs. 1.58 mmol/l. Smith et al. Reported it. Done.") == [
        "HDL was 0.67 vs. 1.58 mmol/l.", "Smith et al. Reported it.", "Done."]
