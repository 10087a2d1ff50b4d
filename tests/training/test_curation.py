"""Curated training sets: a verified export's train split, the literature set, the filters."""

from __future__ import annotations

import json

import pytest

from retrieval.models import Article
from training.curation import TrainingDataError, curate
from training.literature import (
    LiteratureOptions,
    decide_label,
    sources_from_files,
    sources_from_index,
    split_conclusion,
)

pytestmark = [pytest.mark.shared_data, pytest.mark.django_db]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def article(pmid, title, conclusion, *, label="CONCLUSIONS"):
    return Article.objects.create(
        pmid=pmid, title=title, content_hash=pmid,
        abstract_sections=[["BACKGROUND", f"Background of {title}"],
                           ["RESULTS", "Outcomes were measured in 120 adults over a year."],
                           [label, conclusion]])


def test_sft_and_dpo_come_from_the_export_and_an_approved_abstention_is_never_a_target(
        reviewed, exported, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    reviewed("Is metformin safe in stage 3 kidney disease?")
    reviewed("Do statins cause most muscle pain reported on them?", abstained=True)
    curated = curate(out_dir=tmp_path / "set", name="s1", export_dir=exported())

    sft = read_jsonl(tmp_path / "set" / "sft.jsonl")
    dpo = read_jsonl(tmp_path / "set" / "dpo.jsonl")
    assert curated.sft_records == len(sft) == 2
    assert curated.dpo_records == len(dpo) == 1
    targets = [record["messages"][-1]["content"] for record in sft]
    assert "Aspirin lowers recurrent stroke by 22% in pooled trials [1]." in targets
    assert dpo[0]["chosen"][0]["content"].startswith("Aspirin lowers recurrent stroke by 22%")
    assert dpo[0]["rejected"][0]["content"].startswith("Aspirin lowers recurrent stroke [1].")
    card = json.loads((tmp_path / "set" / "card.json").read_text())
    # The export leaves an approved withheld draft out (counted there); curation would drop it
    # too from an older export that still carried it.
    withheld = (card["filtered"].get("review: withheld or abstained draft as the target (sft)", 0)
                + card["sources"]["export"]["files"]["sft"]["counts"].get("withheld_draft", 0))
    assert withheld == 1
    assert card["counts"]["sft"]["by_source"] == {"review_approve": 1, "review_correct": 1}
    assert card["files"]["sft"]["records"] == 2
    assert card["sources"]["export"]["files"]["sft"]["split"]["part"] == "train"


def test_the_same_inputs_give_the_same_card_hash(reviewed, exported, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    export = exported()
    first = curate(out_dir=tmp_path / "a", name="same", export_dir=export)
    second = curate(out_dir=tmp_path / "b", name="same", export_dir=export)
    assert first.card_sha256 == second.card_sha256
    assert (tmp_path / "a" / "sft.jsonl").read_bytes() == \
        (tmp_path / "b" / "sft.jsonl").read_bytes()


def test_an_edited_export_is_refused_before_anything_is_read(reviewed, exported, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    export = exported("sft")
    path = export / "sft.jsonl"
    path.write_text(path.read_text().replace("22%", "92%"))
    with pytest.raises(TrainingDataError, match="fails verification.*line 1"):
        curate(out_dir=tmp_path / "set", name="edited", export_dir=export)
    assert not (tmp_path / "set").exists()


def test_the_eval_split_never_trains(reviewed, exported, tmp_path):
    reviewed("Does aspirin prevent a second stroke?", "correct")
    export = exported("sft", "eval")
    with pytest.raises(TrainingDataError, match="eval split"):
        curate(out_dir=tmp_path / "set", name="eval", export_dir=export)


def test_nothing_left_after_the_filters_is_a_clear_error(reviewed, exported, tmp_path):
    reviewed("Do statins cause most muscle pain reported on them?", abstained=True)
    with pytest.raises(TrainingDataError, match="No training example is left"):
        curate(out_dir=tmp_path / "set", name="empty", export_dir=exported("sft"))


def test_literature_examples_are_built_the_pubmedqa_way_and_decontaminated(tmp_path):
    article("91000001", "Does early mobilisation shorten hospital stay after hip surgery?",
            "Early mobilisation shortened stay and improved function at 30 days.")
    article("91000002", "Is vitamin D alone protective against fractures in older adults?",
            "Vitamin D alone did not reduce fractures in community-dwelling older adults.")
    article("91000003", "Are night shifts a risk factor for migraine in nurses?",
            "Whether night shifts trigger migraine remains unclear.", label="CONCLUSION")
    article("91000004", "What determines adherence to inhaled steroids?",
            "Cost and beliefs determined adherence.")
    # A PubMedQA article (its PMID) and a PubMedQA question under another PMID: never trained on.
    article("10808977", "Can tailored interventions increase mammography use among HMO women?",
            "Tailored interventions increased mammography use.")
    article("91000005", "Can tailored interventions increase mammography use among HMO women?",
            "Tailored interventions increased mammography use.")
    Article.objects.create(pmid="91000006", title="Aspirin after stroke?", content_hash="x",
                           abstract_sections=[["", "An unstructured abstract."]])

    curated = curate(out_dir=tmp_path / "lit", name="lit", literature=sources_from_index(),
                     literature_origin="index")
    records = read_jsonl(tmp_path / "lit" / "sft.jsonl")
    assert curated.literature_examples == 4
    by_question = {r["messages"][1]["content"].split("<question>\n")[1].split("\n")[0]: r
                   for r in records}
    hip = by_question["Does early mobilisation shorten hospital stay after hip surgery?"]
    user, target = hip["messages"][1]["content"], hip["messages"][2]["content"]
    gold = user.split('pmid="91000001"')[0].rsplit('<passage number="', 1)[1].split('"')[0]
    assert target == (f"Early mobilisation shortened stay and improved function at 30 days "
                      f"[{gold}].\nAnswer: yes")
    assert "Answer: yes', 'Answer: no' or 'Answer: maybe'" in user
    assert "Early mobilisation shortened stay" not in user  # the conclusion is the answer
    assert by_question["Is vitamin D alone protective against fractures in older adults?"][
        "messages"][2]["content"].endswith("Answer: no")
    assert by_question["Are night shifts a risk factor for migraine in nurses?"][
        "messages"][2]["content"].endswith("Answer: maybe")
    unlabelled = by_question["What determines adherence to inhaled steroids?"]
    assert "Answer:" not in unlabelled["messages"][2]["content"]
    card = json.loads((tmp_path / "lit" / "card.json").read_text())
    assert card["filtered"] == {
        "literature: decontamination: PubMedQA or MIRAGE question": 1,
        "literature: decontamination: a PubMedQA article in its passages": 1}
    assert card["sources"]["literature"]["articles_skipped"] == {"no conclusion section": 1}
    assert card["counts"]["sft"]["by_label"] == {"maybe": 1, "no": 1, "unlabelled": 1, "yes": 1}


def test_labels_only_where_the_conclusion_decides():
    assert decide_label("Is X safe?", "X was safe and effective.") == "yes"
    assert decide_label("Is X safe?", "X did not reduce mortality.") == "no"
    assert decide_label("Is X safe?", "There was no significant difference in mortality.") == "no"
    assert decide_label("Is X safe?", "The benefit of X remains unclear.") == "maybe"
    assert decide_label("Is X safe?", "It is unclear; X did not reduce mortality.") is None
    assert decide_label("How safe is X?", "X was safe.") is None
    assert split_conclusion([("", "Only one unlabelled section.")]) is None



def pubmedqa_file(path, items):
    """A PubMedQA-format file: {pmid: (question, conclusion, final_decision)}."""
    path.write_text(json.dumps({pmid: {
        "QUESTION": question, "CONTEXTS": [f"Background for {pmid}.", "Outcomes in 80 adults."],
        "LABELS": ["BACKGROUND", "RESULTS"], "LONG_ANSWER": conclusion,
        "final_decision": decision} for pmid, (question, conclusion, decision) in items.items()}))
    return path


def held_out_file(tmp_path, pmid):
    """The held-out file of the PubMedQA-file tests: one bed-rest question under `pmid`."""
    return pubmedqa_file(tmp_path / "held_out.json", {
        pmid: ("Does bed rest speed recovery from low back pain?",
               "Bed rest did not speed recovery.", "no")})


def test_pubmedqa_files_give_literature_decontaminated_against_the_files_given(tmp_path):
    held_out = held_out_file(tmp_path, "92000009")
    train = pubmedqa_file(tmp_path / "train.json", {
        # A pqal_dev PMID and question: trained on only because the held-out file replaces the
        # default decontamination files.
        "10808977": ("Can tailored interventions increase mammography use among HMO women?",
                     "Tailored interventions increased mammography use.", "yes"),
        # The label comes from the conclusion, never from final_decision.
        "92000001": ("Is vitamin D alone protective against fractures in older adults?",
                     "Vitamin D alone did not reduce fractures.", "yes"),
        "92000002": ("Are night shifts a risk factor for migraine in nurses?",
                     "Whether night shifts trigger migraine remains unclear.", "no"),
        # The held-out article and its question under another PMID: neither an example nor a
        # distractor passage.
        "92000009": ("Does bed rest speed recovery from low back pain?",
                     "Bed rest did not speed recovery.", "no"),
        "92000010": ("Does bed rest speed recovery from low back pain?",
                     "Bed rest did not speed recovery.", "no")})

    curate(out_dir=tmp_path / "set", name="pqa", literature=sources_from_files([train]),
           decontaminate=[held_out])
    records = read_jsonl(tmp_path / "set" / "sft.jsonl")
    users = [record["messages"][1]["content"] for record in records]
    assert len(records) == 3
    assert not any("92000009" in user or "92000010" in user or "bed rest" in user.lower()
                   for user in users)
    targets = {user.split("<question>\n")[1].split("\n")[0]: record["messages"][2]["content"]
               for user, record in zip(users, records, strict=True)}
    assert targets["Is vitamin D alone protective against fractures in older adults?"].endswith(
        "Answer: no")
    assert targets["Are night shifts a risk factor for migraine in nurses?"].endswith(
        "Answer: maybe")
    card = json.loads((tmp_path / "set" / "card.json").read_text())
    assert card["filtered"] == {
        "literature: decontamination: a PubMedQA article in its passages": 1,
        "literature: decontamination: PubMedQA or MIRAGE question": 1}
    assert [entry["file"] for entry in card["filters"]["decontamination"]["files"]] == [
        str(held_out)]

    assert any('pmid="10808977"' in user for user in users)

    # By default every evaluation suite's files decontaminate: the pqal_dev article goes.
    curate(out_dir=tmp_path / "default", name="pqa-default",
           literature=sources_from_files([train]))
    assert not any('pmid="10808977"' in record["messages"][1]["content"]
                   for record in read_jsonl(tmp_path / "default" / "sft.jsonl"))


def test_balanced_labels_cap_the_commonest_answer_and_the_card_says_so(tmp_path):
    held_out = held_out_file(tmp_path, "93000099")
    topics = ["aspirin stroke", "statins dementia", "metformin cancer", "zinc colds",
              "yoga asthma", "coffee arrhythmia"]
    items = {f"9300000{n}": (f"Is {topic.split()[0]} protective against {topic.split()[1]}?",
                             f"{topic.split()[0].title()} reduced {topic.split()[1]}.", "yes")
             for n, topic in enumerate(topics)}
    items["93000010"] = ("Does vitamin D prevent fractures in older adults?",
                         "Vitamin D did not reduce fractures.", "no")
    items["93000011"] = ("Do night shifts cause migraine in nurses?",
                         "Night shifts were not associated with migraine.", "no")
    items["93000012"] = ("Is fasting safe in pregnancy?",
                         "Whether fasting is safe in pregnancy remains unclear.", "maybe")
    items["93000013"] = ("How long does influenza immunity last in the elderly?",
                         "Immunity waned within six months.", "yes")
    train = pubmedqa_file(tmp_path / "train.json", items)

    curate(out_dir=tmp_path / "all", name="all", literature=sources_from_files([train]),
           decontaminate=[held_out])
    curate(out_dir=tmp_path / "set", name="balanced", literature=sources_from_files([train]),
           decontaminate=[held_out], options=LiteratureOptions(balance_labels=True))

    unbalanced = json.loads((tmp_path / "all" / "card.json").read_text())
    assert unbalanced["counts"]["sft"]["by_label"] == {
        "maybe": 1, "no": 2, "unlabelled": 1, "yes": 6}
    card = json.loads((tmp_path / "set" / "card.json").read_text())
    # "yes" is capped at the count of the second commonest label, "no"; the rest are kept.
    assert card["counts"]["sft"]["by_label"] == {"maybe": 1, "no": 2, "unlabelled": 1, "yes": 2}
    assert card["filtered"] == {"literature: label balance (yes)": 4}
    assert card["sources"]["literature"]["balanced"]["cap"] == 2
    records = read_jsonl(tmp_path / "set" / "sft.jsonl")
    answers = [record["messages"][-1]["content"].rsplit("Answer: ", 1)[-1] for record in records
               if "Answer: " in record["messages"][-1]["content"]]
    assert sorted(answers) == ["maybe", "no", "no", "yes", "yes"]
    # The same articles give the same set.
    curate(out_dir=tmp_path / "again", name="again", literature=sources_from_files([train]),
           decontaminate=[held_out], options=LiteratureOptions(balance_labels=True))
    assert (tmp_path / "again" / "sft.jsonl").read_bytes() == (
        tmp_path / "set" / "sft.jsonl").read_bytes()


def test_expert_labels_and_the_whole_abstract_as_the_cited_passage(tmp_path):
    held_out = held_out_file(tmp_path, "94000099")
    train = pubmedqa_file(tmp_path / "train.json", {
        # The builder reads "did not reduce" as no; the experts said yes.
        "94000001": ("Is vitamin D alone protective against fractures in older adults?",
                     "Vitamin D alone did not reduce fractures.", "yes"),
        "94000002": ("Are night shifts a risk factor for migraine in nurses?",
                     "Night shifts doubled the odds of migraine.", "yes"),
        "94000003": ("Does yoga improve asthma control in adolescents?",
                     "Yoga improved asthma control scores.", "maybe")})

    def built(name, options):
        curate(out_dir=tmp_path / name, name=name, literature=sources_from_files([train]),
               decontaminate=[held_out], options=options)
        records = read_jsonl(tmp_path / name / "sft.jsonl")
        by_question = {record["messages"][1]["content"].split("<question>\n")[1].split("\n")[0]:
                       record["messages"] for record in records}
        return by_question, json.loads((tmp_path / name / "card.json").read_text())

    default, card = built("default", None)
    vitamin = default["Is vitamin D alone protective against fractures in older adults?"]
    assert vitamin[-1]["content"].endswith("Answer: no")  # the builder's reading
    assert "did not reduce fractures" not in vitamin[1]["content"]  # conclusion withheld
    assert card["sources"]["literature"]["options"] == {
        "balance_labels": False, "expert_labels": False, "gold_passage": "context"}

    grounded, card = built("grounded", LiteratureOptions(gold_passage="abstract",
                                                         expert_labels=True))
    vitamin = grounded["Is vitamin D alone protective against fractures in older adults?"]
    assert vitamin[-1]["content"].endswith("Answer: yes")  # the experts'
    assert "CONCLUSIONS: Vitamin D alone did not reduce fractures." in vitamin[1]["content"]
    assert grounded["Does yoga improve asthma control in adolescents?"][-1]["content"].endswith(
        "Answer: maybe")
    assert card["sources"]["literature"]["options"]["gold_passage"] == "abstract"
    assert card["counts"]["sft"]["by_label"] == {"maybe": 1, "yes": 2}

    with pytest.raises(ValueError, match="gold_passage must be one of context, abstract"):
        LiteratureOptions(gold_passage="conclusion")
