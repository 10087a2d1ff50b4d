"""Labelled claim/passage pairs made from an abstract's own conclusion, the way PubMedQA's
artificial set was made from titles and conclusions.

- supported: a conclusion sentence against the rest of its abstract (and a rule-based
  paraphrase of it);
- contradicted: the same sentence with its direction flipped, a negation inserted or removed,
  its population changed, or one of its numbers changed (only a number the passage states, so
  the passage can refute the change);
- not_found: another article's conclusion, on a similar topic, against this abstract.

Pure functions over text: the verifier's training set (MEDLINE) and the claims benchmark
(PubMedQA, held-out MEDLINE) are built by the same code, so they mean the same thing.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_FOUND = "not_found"
LABELS = (SUPPORTED, CONTRADICTED, NOT_FOUND)

# Kinds of item; each label's kinds, in the order they are tried.
VERBATIM = "verbatim"
PARAPHRASE = "paraphrase"
DIRECTION = "direction"
NEGATION = "negation"
POPULATION = "population"
NUMBER = "number"
OTHER_ARTICLE = "other_article"
CONTRADICTION_KINDS = (DIRECTION, NEGATION, POPULATION, NUMBER)
KIND_LABEL = {VERBATIM: SUPPORTED, PARAPHRASE: SUPPORTED, DIRECTION: CONTRADICTED,
              NEGATION: CONTRADICTED, POPULATION: CONTRADICTED, NUMBER: CONTRADICTED,
              OTHER_ARTICLE: NOT_FOUND}

MIN_CLAIM_WORDS = 6

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def claim_sentences(conclusion: str) -> list[str]:
    """Sentences of a conclusion long enough to be a claim on their own."""
    return [s for s in split_sentences(conclusion) if len(s.split()) >= MIN_CLAIM_WORDS]


# --- word swaps -----------------------------------------------------------------------------


def _pairs(text: str) -> dict[str, str]:
    """'a:b c:d' -> a->b, b->a, c->d, d->c (a later pair never overrides an earlier word)."""
    swaps: dict[str, str] = {}
    for pair in text.split():
        left, right = pair.replace("_", " ").split(":")
        swaps.setdefault(left, right)
        swaps.setdefault(right, left)
    return swaps


DIRECTION_SWAPS = _pairs(
    "increased:decreased increase:decrease increases:decreases increasing:decreasing "
    "reduced:increased reduces:increases reduce:increase reduction:increase "
    "higher:lower high:low highest:lowest improved:worsened improve:worsen improves:worsens "
    "improvement:deterioration better:worse greater:smaller more:less "
    "beneficial:harmful effective:ineffective superior:inferior shorter:longer "
    "elevated:reduced enhanced:impaired enhances:impairs enhance:impair "
    "prolonged:shortened promotes:inhibits promoted:inhibited promote:inhibit "
    "upregulated:downregulated up-regulated:down-regulated upregulation:downregulation "
    "raised:lowered rise:fall gain:loss positive:negative positively:negatively "
    "safe:unsafe accurate:inaccurate reliable:unreliable sufficient:insufficient "
    "adequate:inadequate advantage:disadvantage overestimates:underestimates "
    "overestimated:underestimated facilitates:impairs facilitated:impaired "
    "protective:detrimental success:failure successful:unsuccessful")
POPULATION_SWAPS = _pairs(
    "men:women man:woman male:female males:females boys:girls "
    "adults:children adult:pediatric paediatric:adult elderly:young older:younger "
    "infants:adolescents infant:adolescent smokers:nonsmokers smoker:nonsmoker "
    "diabetic:nondiabetic postmenopausal:premenopausal obese:lean "
    "rats:humans mice:humans inpatients:outpatients "
    "with_diabetes:without_diabetes hypertensive:normotensive")
# Said the other way round, the same claim; never changes a direction, population or number.
PARAPHRASE_SWAPS = {
    "demonstrated": "showed", "demonstrates": "shows", "demonstrate": "show",
    "associated with": "linked to", "utilization": "use", "utilisation": "use",
    "approximately": "about", "therefore": "thus", "frequently": "often",
    "commonly": "often", "prior to": "before", "a number of": "several",
    "in addition": "also", "important": "key", "useful": "helpful", "method": "approach",
    "significantly": "markedly", "patients": "subjects", "indicate": "suggest",
    "indicates": "suggests", "findings": "results", "investigate": "study",
    "evaluate": "assess", "evaluated": "assessed", "possible": "feasible",
}
_LEAD_INS = re.compile(
    r"^(?:in conclusion|in summary|to conclude|overall|taken together|collectively)\s*,\s*|"
    r"^(?:these|our|the present|this|the) (?:results|findings|data|study|studies|analysis|"
    r"observations|trial|review) (?:suggest|suggests|indicate|indicates|show|shows|"
    r"demonstrate|demonstrates|confirm|confirms|support|supports)(?: that)?\s+|"
    r"^we (?:conclude|found|showed|demonstrated|observed)(?: that)?\s+", re.IGNORECASE)


def _case_like(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _swap_one(sentence: str, swaps: dict[str, str], rng: random.Random) -> str | None:
    """Swap one randomly chosen swappable word or phrase (whole words, case kept)."""
    keys = sorted(swaps, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in keys) + r")\b", re.IGNORECASE)
    matches = list(pattern.finditer(sentence))
    if not matches:
        return None
    match = rng.choice(matches)
    found = match.group(0)
    replacement = _case_like(swaps[found.lower()], found)
    return sentence[:match.start()] + replacement + sentence[match.end():]


# --- the changes ----------------------------------------------------------------------------

# Negation removed: each (pattern, replacement) keeps the sentence grammatical.
_NEGATION_REMOVALS = (
    (r"\b(is|are|was|were|may|might|could|should|would|will|does|do|did|has|have|had) not\b",
     r"\1"),
    (r"\bcannot\b", "can"), (r"\bcan not\b", "can"),
    (r"\b(isn't|aren't|wasn't|weren't|doesn't|don't|didn't)\b", None),
    (r"\bno significant\b", "a significant"), (r"\bno difference\b", "a difference"),
    (r"\bno (?:evidence|association|effect|benefit|correlation|relationship)\b", None),
    (r"\bnot significantly\b", "significantly"), (r"\bnot associated\b", "associated"),
    (r"\bfailed to\b", None), (r"\bunlikely\b", "likely"), (r"\bwithout\b", "with"),
)
_CONTRACTIONS = {"isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were",
                 "doesn't": "does", "don't": "do", "didn't": "did"}
_NEGATED_NOUNS = {"evidence": "evidence", "association": "an association", "effect": "an effect",
                  "benefit": "a benefit", "correlation": "a correlation",
                  "relationship": "a relationship"}
# Negation inserted after the first auxiliary or copula.
_NEGATION_INSERT = re.compile(
    r"\b(is|are|was|were|may|might|could|should|would|will|can|does|do|did|has been|"
    r"have been|had been)\b(?! not\b)", re.IGNORECASE)


# A result verb in the past tense takes "did not" and its base form.
_PAST_VERBS = {
    "reduced": "reduce", "increased": "increase", "decreased": "decrease", "improved": "improve",
    "lowered": "lower", "prevented": "prevent", "predicted": "predict", "caused": "cause",
    "affected": "affect", "influenced": "influence", "enhanced": "enhance",
    "shortened": "shorten", "prolonged": "prolong", "changed": "change", "altered": "alter",
    "differed": "differ", "showed": "show", "led": "lead", "resulted": "result",
    "provided": "provide", "induced": "induce", "inhibited": "inhibit", "promoted": "promote",
    "improves": "improve", "reduces": "reduce", "increases": "increase", "decreases": "decrease",
    "predicts": "predict", "prevents": "prevent", "affects": "affect", "lowers": "lower",
    "correlated": "correlate", "worsened": "worsen", "raised": "raise", "protected": "protect",
}
_PAST_VERB = re.compile(r"\b(?<!\bthe )(?<!\ba )(?<!\ban )((?:[a-z]+ly )?)(" +
                        "|".join(_PAST_VERBS) + r")\b", re.IGNORECASE)
_NOT_A_VERB_BEFORE = frozenset("the a an of with in on by to and or was were is are be been "
                               "being has have had not no".split())


def _negate_past_verb(sentence: str) -> str | None:
    """'X reduced Y' -> 'X did not reduce Y'; 'X improves Y' -> 'X does not improve Y'."""
    for match in _PAST_VERB.finditer(sentence):
        before = sentence[:match.start()].split()
        if not before or before[-1].lower().strip(",;") in _NOT_A_VERB_BEFORE:
            continue
        verb = match.group(2)
        auxiliary = "does" if verb.lower().endswith("s") and verb.lower() in (
            "improves", "reduces", "increases", "decreases", "predicts", "prevents", "affects",
            "lowers") else "did"
        negated = f"{auxiliary} not {match.group(1)}{_PAST_VERBS[verb.lower()]}"
        return sentence[:match.start()] + negated + sentence[match.end():]
    return None


def negate(sentence: str) -> str | None:
    for pattern, replacement in _NEGATION_REMOVALS:
        match = re.search(pattern, sentence, re.IGNORECASE)
        if not match:
            continue
        found = match.group(0)
        lowered = found.lower()
        if lowered in _CONTRACTIONS:
            new = _CONTRACTIONS[lowered]
        elif lowered.startswith("no ") and lowered.split()[1] in _NEGATED_NOUNS:
            new = _NEGATED_NOUNS[lowered.split()[1]]
        elif lowered == "failed to":
            # "X failed to reduce Y" -> "X was able to reduce Y"
            new = "was able to"
        else:
            new = re.sub(pattern, replacement or "", found, flags=re.IGNORECASE)
        return sentence[:match.start()] + _case_like(new, found) + sentence[match.end():]
    match = _NEGATION_INSERT.search(sentence)
    if match is None:
        return _negate_past_verb(sentence)
    word = match.group(0)
    if word.lower() == "can":
        negated = _case_like("cannot", word)
    elif " " in word:  # "has been" -> "has not been"
        first, rest = word.split(" ", 1)
        negated = f"{first} not {rest}"
    else:
        negated = f"{word} not"
    return sentence[:match.start()] + negated + sentence[match.end():]


_P_VALUE = re.compile(r"\bp\s*[<=>≤]\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(\s?%|-fold| ?fold)?(?![\w.]*\d)")


def _changed_number(value: str, rng: random.Random) -> str:
    if "." in value:
        decimals = len(value.split(".")[1])
        number = float(value)
        factor = rng.choice((0.5, 1.6, 2.0, 2.5))
        changed = round(number * factor + (10 ** -decimals), decimals)
        return f"{changed:.{decimals}f}"
    number = int(value)
    delta = max(1, round(number * rng.choice((0.3, 0.5, 0.8))))
    changed = number + delta if number < 3 or rng.random() < 0.5 else number - delta
    return str(max(changed, 0) if changed != number else number + 1)


def change_number(sentence: str, passage: str, rng: random.Random) -> str | None:
    """Change one number that the passage also states (so the passage refutes the change);
    years and numbers of one digit with no unit are left alone (often not results)."""
    passage_numbers = set(re.findall(r"\d+(?:\.\d+)?", passage))
    candidates = [m for m in _NUMBER.finditer(sentence)
                  if m.group(1) in passage_numbers
                  and not _P_VALUE.search(sentence[max(0, m.start() - 6):m.start()])
                  and not (len(m.group(1)) == 4 and 1900 <= float(m.group(1)) <= 2030)
                  and (m.group(2) or len(m.group(1).replace(".", "")) > 1)]
    if not candidates:
        return None
    match = rng.choice(candidates)
    for _ in range(5):
        new_value = _changed_number(match.group(1), rng)
        if new_value != match.group(1) and new_value not in passage_numbers:
            break
    else:
        return None
    return sentence[:match.start(1)] + new_value + sentence[match.end(1):]


def paraphrase(sentence: str, rng: random.Random) -> str | None:
    """Drop a hedging lead-in and swap meaning-preserving words; None if nothing changed."""
    text = _LEAD_INS.sub("", sentence, count=1)
    if text != sentence:
        text = text[:1].upper() + text[1:]
    keys = sorted(PARAPHRASE_SWAPS, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in keys) + r")\b", re.IGNORECASE)
    for match in reversed(list(pattern.finditer(text))):
        if rng.random() < 0.8:
            found = match.group(0)
            text = (text[:match.start()] + _case_like(PARAPHRASE_SWAPS[found.lower()], found)
                    + text[match.end():])
    return text if text != sentence else None


def change_claim(sentence: str, kind: str, *, passage: str, rng: random.Random) -> str | None:
    """The sentence with one change of `kind`, or None where that change does not apply."""
    if kind == DIRECTION:
        changed = _swap_one(sentence, DIRECTION_SWAPS, rng)
    elif kind == NEGATION:
        changed = negate(sentence)
    elif kind == POPULATION:
        changed = _swap_one(sentence, POPULATION_SWAPS, rng)
    elif kind == NUMBER:
        changed = change_number(sentence, passage, rng)
    elif kind == PARAPHRASE:
        changed = paraphrase(sentence, rng)
    else:
        raise ValueError(f"unknown kind of change {kind!r}")
    return changed if changed and changed != sentence else None


# --- pairs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimPair:
    claim: str
    passage: str
    label: str
    kind: str
    source: str  # the article (PMID) whose passage this is
    claim_source: str = ""  # the article the claim came from, when it is another one

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value != ""}


def pairs_for_abstract(source: str, conclusion: str, passage: str, *, rng: random.Random,
                       other_conclusion: str = "", other_source: str = "",
                       sentences_per_article: int = 1,
                       contradictions_per_sentence: int = 2,
                       kinds: Sequence[str] = CONTRADICTION_KINDS,
                       with_paraphrase: bool = True) -> list[ClaimPair]:
    """Supported, contradicted and not_found pairs for one abstract (its conclusion apart from
    the rest). Contradiction kinds are tried in random order, each sentence getting at most
    `contradictions_per_sentence` of them; rarer kinds (number, population) first when they
    apply, so every kind is represented."""
    pairs: list[ClaimPair] = []
    sentences = claim_sentences(conclusion)
    rng.shuffle(sentences)
    for sentence in sentences[:sentences_per_article]:
        pairs.append(ClaimPair(sentence, passage, SUPPORTED, VERBATIM, source))
        if with_paraphrase:
            reworded = change_claim(sentence, PARAPHRASE, passage=passage, rng=rng)
            if reworded:
                pairs.append(ClaimPair(reworded, passage, SUPPORTED, PARAPHRASE, source))
        order = list(kinds)
        rng.shuffle(order)
        order.sort(key=lambda k: 0 if k in (NUMBER, POPULATION) else 1)
        made = 0
        for kind in order:
            if made >= contradictions_per_sentence:
                break
            changed = change_claim(sentence, kind, passage=passage, rng=rng)
            if changed:
                pairs.append(ClaimPair(changed, passage, CONTRADICTED, kind, source))
                made += 1
    if other_conclusion:
        others = claim_sentences(other_conclusion)
        if others:
            pairs.append(ClaimPair(rng.choice(others), passage, NOT_FOUND, OTHER_ARTICLE,
                                   source, other_source))
    return pairs


RESTATED = "restated"
MAX_RESTATED_WORDS = 40  # as long as a claim, not a whole paragraph


def restated_pairs(source: str, passage: str, *, rng: random.Random,
                   kinds: Sequence[str] = CONTRADICTION_KINDS) -> list[ClaimPair]:
    """Training only: one of the passage's own sentences (supported, kind "restated") and the
    same sentence changed (contradicted, kind "restated-<change>"). With the evidence holding
    the very sentence, the model learns which one-word differences reverse a statement; the
    conclusions then teach it to see them through a paraphrase."""
    sentences = [s for s in split_sentences(passage)
                 if MIN_CLAIM_WORDS <= len(s.split()) <= MAX_RESTATED_WORDS]
    rng.shuffle(sentences)
    for sentence in sentences:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            changed = change_claim(sentence, kind, passage=passage, rng=rng)
            if changed:
                return [ClaimPair(sentence, passage, SUPPORTED, RESTATED, source),
                        ClaimPair(changed, passage, CONTRADICTED, f"{RESTATED}-{kind}", source)]
    return []


def nearest_topics(texts: Sequence[str]) -> list[int]:
    """For each text, the index of the most similar other text (TF-IDF cosine): its claims
    are on a similar topic yet were not drawn from this abstract."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) < 2:
        return [0] * len(texts)
    matrix = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=1).fit_transform(
        list(texts))
    similarity = (matrix @ matrix.T).toarray()
    np.fill_diagonal(similarity, -1.0)
    return [int(i) for i in similarity.argmax(axis=1)]


class ClaimsFileError(ValueError):
    """A claims file cannot be read; the message names the file and line."""


def read_claims_file(path: Path) -> list[ClaimPair]:
    """JSON Lines, one {"claim", "passage", "label"} object a line (also "kind", "source";
    other keys ignored, blank lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ClaimsFileError(f"Cannot read the claims file {path} ({error.strerror}); build "
                              "one with `python manage.py build_claims`.") from error
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            claim, passage, label = item["claim"], item["passage"], item["label"]
        except (ValueError, KeyError, TypeError) as error:
            raise ClaimsFileError(f"{path}, line {number}: not a JSON object with claim, "
                                  f"passage and label ({error}).") from None
        if not isinstance(claim, str) or not isinstance(passage, str) or not claim.strip():
            raise ClaimsFileError(f"{path}, line {number}: claim and passage must be text.")
        if label not in LABELS:
            raise ClaimsFileError(f"{path}, line {number}: label {label!r} is not one of "
                                  f"{', '.join(LABELS)}.")
        pairs.append(ClaimPair(claim, passage, label, str(item.get("kind") or ""),
                               str(item.get("source") or "")))
    return pairs


def write_claims_file(pairs: Sequence[ClaimPair], path: Path) -> None:
    """Written aside, then moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".writing")
    with open(staging, "w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.as_dict(), ensure_ascii=False) + "\n")
    staging.replace(path)
