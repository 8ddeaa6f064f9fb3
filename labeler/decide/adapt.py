"""Adapting a model to one shelter: its breed frequencies, learned from staff decisions.

A model trained on ImageNet believes every breed is equally likely; a shelter sees a few
breeds most nights. Staff decisions (reviewed breeds, audits, breeds set in the shelter's own
screens) are labelled photos of this shelter's dogs, so their breed counts estimate the
shelter's frequencies. Serving multiplies each photo's probabilities by ``weight[breed]``
(the shelter's frequency over the model's uniform one) and renormalises: Bayes' rule with a
new prior, nothing retrained. Counts are smoothed towards uniform (``strength`` pseudo-
decisions spread over all breeds), so a breed staff have not met yet keeps a small, non-zero
weight. Labels that are not breeds keep weight 1.

Pure functions: the CLI (``labeler adapt``) reads the decisions, these decide, and nothing is
applied unless asked.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from labeler.core.domain import NOT_A_BREED
from labeler.decide.thresholds import wilson_interval

DEFAULT_STRENGTH = 20.0
MIN_DECISIONS = 30
# The precision the product promises for auto-labels: an adapted model must keep it on the
# decisions held out, at the threshold in force, or it is not written.
MIN_AUTO_PRECISION = 0.95
# Fewer held-out auto-labels than this say too little to refuse on their estimate alone.
MIN_JUDGED_AUTO = 20
HELD_OUT_SHARE = 0.2


class AdaptRefused(Exception):
    """Too little evidence, or the evidence says adapting would not help."""


@dataclass(frozen=True)
class Decided:
    """One photo staff decided: the model's stored top labels and the breed staff chose."""

    key: str  # the photo (or animal) id: held-out membership is a stable function of it
    candidates: tuple[tuple[str, float], ...]  # the model's top labels and probabilities
    staff_label: str


def class_weights(
    counts: Mapping[str, int], labels: Sequence[str], strength: float = DEFAULT_STRENGTH
) -> list[float]:
    """One weight per label: smoothed shelter frequency over uniform (mean weight of the
    breeds is 1); labels that are not breeds get 1."""
    if strength <= 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a positive number, got {strength}")
    breeds = [label for label in labels if label not in NOT_A_BREED]
    total = sum(counts.get(label, 0) for label in breeds)
    k = len(breeds)
    weights = []
    for label in labels:
        if label in NOT_A_BREED:
            weights.append(1.0)
            continue
        frequency = (counts.get(label, 0) + strength / k) / (total + strength)
        weights.append(frequency * k)
    return weights


def reweight(
    candidates: Sequence[tuple[str, float]], weight_of: Mapping[str, float], rest_weight: float
) -> tuple[tuple[str, float], ...]:
    """A photo's top labels under new class weights, best first. The probability outside the
    top labels is weighted by ``rest_weight`` (the mean weight of the other labels)."""
    listed = sum(p for _, p in candidates)
    rest = max(0.0, 1.0 - listed)
    scored = [(label, p * weight_of.get(label, 1.0)) for label, p in candidates]
    total = sum(s for _, s in scored) + rest * rest_weight
    if total <= 0:
        return tuple(candidates)
    return tuple(sorted(((label, s / total) for label, s in scored), key=lambda x: -x[1]))


def held_out(key: str, share: float = HELD_OUT_SHARE) -> bool:
    """A stable pseudo-random choice of the decisions kept apart for evaluation."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass(frozen=True)
class Outcome:
    n: int
    top1_right: int
    auto: int
    auto_right: int

    def describe(self) -> str:
        precision = f"{self.auto_right / self.auto:.1%}" if self.auto else "n/a"
        return (
            f"best guess right {self.top1_right}/{self.n} ({self.top1_right / self.n:.1%}); "
            f"over the threshold {self.auto}/{self.n} ({self.auto / self.n:.1%}), "
            f"{precision} of them right"
        )


def outcome(
    rows: Iterable[tuple[tuple[tuple[str, float], ...], str]],
    threshold: float,
    reject: frozenset[str],
) -> Outcome:
    n = top1 = auto = auto_right = 0
    for candidates, truth in rows:
        n += 1
        label, confidence = candidates[0]
        right = label == truth
        top1 += right
        if confidence >= threshold and label not in reject:
            auto += 1
            auto_right += right
    return Outcome(n, top1, auto, auto_right)


@dataclass(frozen=True)
class Adaptation:
    weights: list[float]
    counts: dict[str, int]
    before: Outcome  # held-out decisions, the model as it is
    after: Outcome  # the same decisions, weights learned without them

    def evidence(self) -> str:
        common = ", ".join(f"{label} {n}" for label, n in Counter(self.counts).most_common(8))
        return "\n".join(
            [
                f"decisions used: {sum(self.counts.values())} ({len(self.counts)} breeds; "
                f"most decided: {common})",
                f"held out for evaluation: {self.before.n} decisions",
                f"  the model as it is:   {self.before.describe()}",
                f"  adapted to the shelter: {self.after.describe()}",
            ]
        )


def adapt(
    decided: Sequence[Decided],
    labels: Sequence[str],
    threshold: float,
    reject: frozenset[str],
    strength: float = DEFAULT_STRENGTH,
    min_decisions: int = MIN_DECISIONS,
    current_weights: Sequence[float] | None = None,
    earlier: Sequence[str] = (),
) -> Adaptation:
    """Learn weights from the decisions not held out, judge them on those held out, and
    return the weights re-learned from every decision. Raises :class:`AdaptRefused`.

    ``current_weights``: the weights the stored predictions were made with (a model adapted
    before), divided out so that new weights replace them instead of compounding.
    ``earlier``: staff's breeds for photos an earlier model version classified: they count
    for the shelter's frequencies, but only this version's predictions can judge the result."""
    known = set(labels)
    usable = [d for d in decided if d.staff_label in known and d.candidates]
    before_now = [label for label in earlier if label in known]
    if len(usable) + len(before_now) < min_decisions:
        raise AdaptRefused(
            f"{len(usable) + len(before_now)} staff decisions name one of the model's labels; "
            f"at least {min_decisions} are needed to estimate the shelter's breeds"
        )
    fit = [d for d in usable if not held_out(d.key)]
    test = [d for d in usable if held_out(d.key)]
    if not test:
        raise AdaptRefused(
            "too few decisions on this model version's own predictions to keep some apart for "
            "evaluation: let staff review a night's results first"
        )
    fit_counts = Counter(d.staff_label for d in fit) + Counter(before_now)
    fit_weights = class_weights(fit_counts, labels, strength)
    before = outcome(((d.candidates, d.staff_label) for d in test), threshold, reject)
    if current_weights is not None:
        fit_weights = [w / old for w, old in zip(fit_weights, current_weights, strict=True)]
    after = outcome(
        ((reweighted(d.candidates, labels, fit_weights), d.staff_label) for d in test),
        threshold,
        reject,
    )
    if after.top1_right < before.top1_right:
        raise AdaptRefused(
            "on the decisions held out, adapting makes the best guess worse "
            f"({after.top1_right} right against {before.top1_right}): not adapting"
        )
    if below_promise(after):
        raise AdaptRefused(
            f"on the decisions held out, the adapted model's auto-labels at the threshold in "
            f"force ({threshold:.2f}) would be {after.auto_right}/{after.auto} right, under "
            f"{MIN_AUTO_PRECISION:.0%}: not adapting (more decisions, or a higher "
            "LABELER_REVIEW_THRESHOLD, may help)"
        )
    counts = dict(Counter(d.staff_label for d in usable) + Counter(before_now))
    return Adaptation(class_weights(counts, labels, strength), counts, before, after)


# Staff must have chosen a breed outside the model at least this often over one label before
# adapt calls that label a look-alike of it.
MIN_OUTSIDE = 3


@dataclass(frozen=True)
class OutsideTheModel:
    """The animals the model called ``label``: how many there were, and which of the
    shelter's breeds outside the model staff chose for them instead (most chosen first)."""

    label: str
    decided: int
    chosen: tuple[tuple[str, int], ...]

    @property
    def outside(self) -> int:
        return sum(n for _, n in self.chosen)

    def describe(self) -> str:
        names = ", ".join(f"{name!r} {n}" for name, n in self.chosen[:3])
        return (
            f"{self.label}: for {self.outside} of the {self.decided} animals the model called so, "
            f"staff chose a breed it does not know ({names})"
        )

    def chosen_instead(self) -> str:
        """What staff chose instead, in words that finish "staff chose ... over it"."""
        names = " and ".join(f"{name!r} {n} times" for name, n in self.chosen[:3])
        return f"{names} among {self.decided} animals it was given"


def look_alikes(
    decisions: Iterable[tuple[str, str | None]], never: frozenset[str] = frozenset()
) -> list[OutsideTheModel]:
    """The model's labels that stand, at this shelter, for a breed the model does not know.

    ``decisions``: for each animal the model answered, its answer and the shelter's breed
    staff chose when it is outside the model (None when staff chose one of the model's labels
    or left the answer as it was). A label is listed when staff chose outside breeds over it
    at least ``MIN_OUTSIDE`` times and so often that its answers cannot keep the precision
    promise: the share's whole 95% interval lies above ``1 - MIN_AUTO_PRECISION``. Labels that
    are not breeds and those in ``never`` (never auto-labelled anyway) are not listed. Most
    affected first."""
    decided: Counter[str] = Counter()
    chosen: dict[str, Counter[str]] = {}
    for label, breed in decisions:
        decided[label] += 1
        if breed is not None:
            chosen.setdefault(label, Counter())[breed] += 1
    found = []
    for label, names in chosen.items():
        if label in never or label in NOT_A_BREED:
            continue
        outside = sum(names.values())
        interval = wilson_interval(outside, decided[label])
        too_often = interval is not None and interval.low > 1.0 - MIN_AUTO_PRECISION
        if outside >= MIN_OUTSIDE and too_often:
            ranked = tuple(sorted(names.items(), key=lambda item: (-item[1], item[0])))
            found.append(OutsideTheModel(label, decided[label], ranked))
    return sorted(found, key=lambda item: (-item.outside / item.decided, item.label))


def drifted(
    outside: Iterable[tuple[str, tuple[str, float], str]],
    threshold: float,
    never: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Where the adapted model would take animals staff set to a breed outside the model.

    ``outside``: for each such animal, today's answer, the adapted model's best guess for it
    (label, confidence) and the breed staff chose. As the shelter's prior sharpens, a breed
    outside the model drifts onto its next look-alike (a foxhound from Walker hound to beagle)
    before any animal was answered so. Returned: (label, breed) for every animal the adapted
    model would auto-label with another label than today's, in the form :func:`look_alikes`
    counts."""
    # Auto-labels only: counting every answer would name a common breed a look-alike from
    # low-confidence answers that go to review anyway (in a replay, Old English sheepdog for
    # Shih-Tzus, ten points of coverage lost for no precision).
    return [
        (label, breed)
        for today, (label, confidence), breed in outside
        if label != today
        and confidence >= threshold
        and label not in never
        and label not in NOT_A_BREED
    ]


def below_promise(result: Outcome) -> bool:
    """The held-out auto-labels show a precision under the promise: clearly (the whole 95%
    interval under it), or on enough of them for the estimate itself to count."""
    if not result.auto:
        return False
    interval = wilson_interval(result.auto_right, result.auto)
    clearly = interval is not None and interval.high < MIN_AUTO_PRECISION
    estimate = result.auto_right / result.auto
    return clearly or (result.auto >= MIN_JUDGED_AUTO and estimate < MIN_AUTO_PRECISION)


def reweighted(
    candidates: Sequence[tuple[str, float]], labels: Sequence[str], weights: Sequence[float]
) -> tuple[tuple[str, float], ...]:
    """:func:`reweight` with one weight per label; the rest weighted by the mean weight of
    the labels not listed."""
    weight_of = dict(zip(labels, weights, strict=True))
    listed = {label for label, _ in candidates}
    others = [w for label, w in weight_of.items() if label not in listed]
    rest_weight = sum(others) / len(others) if others else 1.0
    return reweight(candidates, weight_of, rest_weight)
