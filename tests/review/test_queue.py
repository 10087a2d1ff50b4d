"""Which answers enter the review queue, and in what order reviewers see them."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from review.models import ReviewItem
from review.selectors import review_filter_choices, review_queue
from review.services import enqueue_for_review, in_quality_sample


def test_a_well_supported_answer_with_no_feedback_is_not_queued(answered):
    consultation = answered()
    assert enqueue_for_review(consultation_id=consultation.pk) is None
    assert not ReviewItem.objects.exists()


def test_a_thumbs_down_queues_the_answer(answered, feedback_on):
    consultation = answered()
    feedback_on(consultation, helpful=False)
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert item.reasons == ["thumbs_down"]
    assert item.priority == 1
    assert item.required_reviews == 1


def test_an_unsafe_flag_needs_two_independent_reviews(answered, feedback_on):
    consultation = answered()
    feedback_on(consultation, helpful=False, problems=["unsafe"])
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert item.reasons == ["unsafe", "thumbs_down"]
    assert (item.priority, item.required_reviews) == (0, 2)


def test_unsupported_claims_abstentions_and_low_confidence_routing_are_queued(answered):
    unsupported = answered(supported=(True, False))
    abstained = answered("Is vitamin D useful?", abstained=True)
    unsure_route = answered("Which statin?", routing_confidence=0.3)
    fallback = answered("Which beta blocker?", routing_fallback=True)
    reasons = {c.pk: enqueue_for_review(consultation_id=c.pk).reasons
               for c in (unsupported, abstained, unsure_route, fallback)}
    assert reasons == {unsupported.pk: ["unsupported"], abstained.pk: ["abstained"],
                       unsure_route.pk: ["low_confidence"], fallback.pk: ["low_confidence"]}


def test_a_configurable_share_of_all_answers_is_sampled(answered, settings):
    settings.REVIEW_SAMPLE_RATE = 1.0
    item = enqueue_for_review(consultation_id=answered().pk)
    assert item.reasons == ["sample"] and item.priority == 3
    drawn = sum(in_quality_sample(n, 0.1) for n in range(2000))
    assert 150 < drawn < 250
    assert in_quality_sample(7, 0.1) == in_quality_sample(7, 0.1)


def test_queueing_twice_merges_reasons_into_one_item(answered, feedback_on):
    consultation = answered(supported=(False, True))
    enqueue_for_review(consultation_id=consultation.pk)
    feedback_on(consultation, helpful=False)
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert ReviewItem.objects.count() == 1
    assert item.reasons == ["unsupported", "thumbs_down"]
    assert item.priority == 1


def test_an_unfinished_consultation_is_not_queued(answered):
    consultation = answered(supported=(False,))
    consultation.status = "running"
    consultation.save(update_fields=["status"])
    assert enqueue_for_review(consultation_id=consultation.pk) is None


def test_the_queue_puts_unsafe_first_then_thumbs_down_then_low_support_then_sample(
        answered, feedback_on, settings, reviewer):
    settings.REVIEW_SAMPLE_RATE = 1.0
    sample = answered("q sample")
    low_support_old = answered("q low old", supported=(False,))
    low_support_new = answered("q low new", supported=(False,))
    thumbs = answered("q thumbs")
    feedback_on(thumbs, helpful=False)
    unsafe = answered("q unsafe")
    feedback_on(unsafe, helpful=False, problems=["unsafe"])
    for consultation in (sample, low_support_old, low_support_new, thumbs, unsafe):
        enqueue_for_review(consultation_id=consultation.pk)
    ReviewItem.objects.filter(consultation=low_support_old).update(
        created_at=timezone.now() - timedelta(days=2))
    order = [item.consultation.question for item in review_queue(reviewer=reviewer)]
    assert order == ["q unsafe", "q thumbs", "q low old", "q low new", "q sample"]


def test_reviewers_filter_by_reason_model_specialty_and_date(answered, feedback_on, reviewer):
    stroke = answered("Does aspirin prevent stroke recurrence?", model_name="model-a",
                      supported=(False,))
    kidney = answered("Does early dialysis help in kidney failure?", model_name="model-b")
    feedback_on(kidney, helpful=False)
    for consultation in (stroke, kidney):
        enqueue_for_review(consultation_id=consultation.pk)

    def questions(**filters):
        return [i.consultation.question for i in review_queue(reviewer=reviewer, **filters)]

    assert questions(reason="thumbs_down") == [kidney.question]
    assert questions(model="model-a") == [stroke.question]
    assert questions(specialty="neurology") == [stroke.question]
    assert questions(specialty="nephrology") == [kidney.question]
    tomorrow = timezone.now().date() + timedelta(days=1)
    assert questions(since=tomorrow) == []


def test_an_unsafe_flag_after_approval_reopens_the_item(answered, feedback_on, reviewer):
    from review.services import review_item_claim, review_item_decide

    consultation = answered(supported=(False,))
    item = enqueue_for_review(consultation_id=consultation.pk)
    review_item_claim(item_id=item.pk, reviewer=reviewer)
    review_item_decide(item_id=item.pk, reviewer=reviewer, kind="approve")
    feedback_on(consultation, helpful=False, problems=["unsafe"])
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert (item.status, item.round, item.priority, item.required_reviews) == (
        "pending", 2, 0, 2)


def test_the_bundled_model_is_named_not_shown_as_its_folder(answered):
    consultation = answered(supported=(False,),
                            model_name="/home/dr/clinic/var/models/smollm2-135m-instruct")
    item = enqueue_for_review(consultation_id=consultation.pk)
    assert item.model_name == "smollm2-135m-instruct"


def test_each_model_and_specialty_is_offered_once_as_a_filter(answered):
    for number in range(3):
        enqueue_for_review(consultation_id=answered(
            f"Does aspirin prevent stroke, case {number}?", supported=(False,)).pk)
    choices = review_filter_choices()
    assert choices["models"] == ["smollm2-135m"]
    assert len(choices["specialties"]) == len(set(choices["specialties"])) == 1
