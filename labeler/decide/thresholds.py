"""Precision measured from staff decisions, and a review threshold learned from them.
Pure functions: the rows come in as plain values (see ``repository`` for the SQL).

Which staff decisions count, and how much
-----------------------------------------
Every row a model version decided falls in one of three strata, by what the pass did with it:

* ``confident``: auto-labelled, or sent to staff as an audit. Audits are drawn independently of
  the photo (``labeler.decide.audit``), so the reviewed audits are a random sample of this stratum.
* ``doubtful``: sent to review because the model was unsure. Staff review these rows anyway.
* Auto-labels that staff happened to correct are *not* used: staff notice the wrong ones, so
  they would make the model look worse than it is, in an unknown way.

A reviewed row stands for the rows of its stratum (post-stratified weights N_s / n_s), so a
shelter that audits 2% of its confident rows and reviews all doubtful rows still gets an
estimate for the whole population of rows above a threshold, not one tilted towards the
doubtful rows that staff see most. The interval is Wilson's, on Kish's effective sample size
of the weighted sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

CONFIDENT = "confident"
DOUBTFUL = "doubtful"
STRATA = (CONFIDENT, DOUBTFUL)

DEFAULT_CONFIDENCE_LEVEL = 0.95
DEFAULT_MIN_ROWS = 50
DEFAULT_MIN_ROWS_ABOVE = 30


class CalibrationRefused(Exception):
    """Not enough evidence for a threshold; the message says what is missing."""


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: float  # the (effective) number of rows behind it

    def describe(self) -> str:
        return f"{self.estimate:.1%} (95% interval {self.low:.1%}-{self.high:.1%}, n={self.n:.0f})"


def wilson_interval(
    successes: float, n: float, level: float = DEFAULT_CONFIDENCE_LEVEL
) -> Interval | None:
    """Wilson score interval of a proportion, two-sided at ``level``; None without rows.

    ``n`` may be an effective (non-integer) sample size."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 and 1 the bound is exactly the estimate; rounding would leave crumbs like 3e-17.
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return Interval(p, low, high, n)


# --- measured precision, for `labeler status` -------------------------------------------------


@dataclass(frozen=True)
class VersionCounts:
    """What one model version did, and what staff said about it (from ``repository``)."""

    model_version: str
    decided: int  # rows with a result from this version
    auto: int  # auto-labelled
    audit: int  # confident, sent to staff as audits
    doubtful: int  # sent to review because the model was unsure
    audit_reviewed: int = 0
    audit_correct: int = 0
    doubtful_reviewed: int = 0
    doubtful_correct: int = 0
    # Auto-labels staff replaced with another breed (a photo's reviewed breed, or an animal's
    # breed set in the shelter's own screens): each one is known wrong, so precision cannot be
    # above (auto - auto_corrected) / auto.
    auto_corrected: int = 0


@dataclass(frozen=True)
class VersionQuality:
    model_version: str
    decided: int
    review_rate: float  # share sent to staff, audits included
    audit_rate: float
    precision: Interval | None  # of the auto-labels, from audits: unbiased
    doubtful_agreement: Interval | None  # staff agreed with the model's best breed
    auto: int = 0
    auto_corrected: int = 0

    @property
    def precision_at_most(self) -> float | None:
        """The share of auto-labels not corrected by staff: precision cannot be higher."""
        if not self.auto_corrected or not self.auto:
            return None
        return (self.auto - self.auto_corrected) / self.auto

    def lines(self) -> list[str]:
        out = [
            f"model {self.model_version}: {self.decided} rows decided, "
            f"{self.review_rate:.1%} sent to review ({self.audit_rate:.1%} as audits)"
        ]
        if self.precision is None:
            out.append("  precision of auto-labels: not measured yet (no reviewed audits)")
        else:
            out.append(
                f"  precision of auto-labels (from {self.precision.n:.0f} reviewed audits): "
                f"{self.precision.describe()}"
            )
        at_most = self.precision_at_most
        if at_most is not None:
            out.append(
                f"  staff corrected {self.auto_corrected} of {self.auto} auto-labels: "
                f"precision at most {at_most:.1%}"
            )
        if self.doubtful_agreement is not None:
            out.append(
                "  on reviewed doubtful rows the model's best breed was right "
                f"{self.doubtful_agreement.describe()}"
            )
        return out


@dataclass(frozen=True)
class GroupVerdict:
    """One animal a model version decided, and what staff said about it (if anything)."""

    model_version: str
    auto: bool  # written to the record without a human
    audit: bool
    doubtful: bool
    staff_agrees: bool | None  # None: staff have not decided


def group_version_counts(verdicts: Sequence[GroupVerdict]) -> list[VersionCounts]:
    """The per-animal twin of ``evidence.quality_counts``: audits give the unbiased
    precision of what labeler writes on animal records."""
    by_version: dict[str, list[GroupVerdict]] = {}
    for v in verdicts:
        by_version.setdefault(v.model_version, []).append(v)
    out = []
    for version in sorted(by_version):
        rows = by_version[version]
        audits = [v for v in rows if v.audit]
        doubtful = [v for v in rows if v.doubtful and not v.audit]
        out.append(
            VersionCounts(
                model_version=version,
                decided=len(rows),
                auto=sum(v.auto for v in rows),
                audit=len(audits),
                doubtful=len(doubtful),
                audit_reviewed=sum(v.staff_agrees is not None for v in audits),
                audit_correct=sum(v.staff_agrees is True for v in audits),
                doubtful_reviewed=sum(v.staff_agrees is not None for v in doubtful),
                doubtful_correct=sum(v.staff_agrees is True for v in doubtful),
                auto_corrected=sum(v.auto and v.staff_agrees is False for v in rows),
            )
        )
    return out


def version_quality(
    counts: VersionCounts, level: float = DEFAULT_CONFIDENCE_LEVEL
) -> VersionQuality:
    decided = counts.decided
    precision = wilson_interval(counts.audit_correct, counts.audit_reviewed, level)
    if precision is not None and counts.auto_corrected and counts.auto:
        # The audits sample the auto-labels fairly; the corrections are certain mistakes among
        # them, so no part of the interval may claim more than the uncorrected share.
        bound = (counts.auto - counts.auto_corrected) / counts.auto
        precision = Interval(
            min(precision.estimate, bound),
            min(precision.low, bound),
            min(precision.high, bound),
            precision.n,
        )
    return VersionQuality(
        model_version=counts.model_version,
        decided=decided,
        review_rate=(counts.audit + counts.doubtful) / decided if decided else 0.0,
        audit_rate=counts.audit / decided if decided else 0.0,
        precision=precision,
        doubtful_agreement=wilson_interval(
            counts.doubtful_correct, counts.doubtful_reviewed, level
        ),
        auto=counts.auto,
        auto_corrected=counts.auto_corrected,
    )


# --- calibration, for `labeler calibrate` -----------------------------------------------------


@dataclass(frozen=True)
class DecidedRow:
    """One row a model version decided (reviewed or not)."""

    confidence: float
    margin: float
    stratum: str  # CONFIDENT or DOUBTFUL
    correct: bool | None = None  # staff's breed == the model's best breed; None: no evidence
    eligible: bool = True  # False: the rule always reviews it (e.g. "not a dog")


def decided_row(
    *,
    confidence: float | None,
    confidence_2: float | None,
    breed: str | None,
    audit: int | bool,
    auto: bool,
    reviewed: bool,
    agree: bool | None,
    reject_labels: frozenset[str] = frozenset(),
) -> DecidedRow | None:
    """A database row (``evidence.decided_rows``) as calibration evidence; None if unusable."""
    if confidence is None or not math.isfinite(confidence):
        return None
    second = confidence_2 if confidence_2 is not None and math.isfinite(confidence_2) else 0.0
    if audit:
        stratum, correct = CONFIDENT, bool(agree) if reviewed else None
    elif auto:
        # Staff corrections of auto-labels are not evidence: they catch the wrong ones.
        stratum, correct = CONFIDENT, None
    else:
        stratum, correct = DOUBTFUL, bool(agree) if reviewed else None
    return DecidedRow(
        confidence=confidence,
        margin=confidence - second,
        stratum=stratum,
        correct=correct,
        eligible=breed not in reject_labels,
    )


@dataclass(frozen=True)
class ThresholdPoint:
    threshold: float
    precision: Interval
    coverage: float
    reviewed_above: int


@dataclass(frozen=True)
class Calibration:
    threshold: float
    margin: float
    target_precision: float
    point: ThresholdPoint
    rows_used: int
    rows_decided: int
    current: ThresholdPoint | None = None  # the same measures at the threshold now in force
    tried: list[ThresholdPoint] = field(default_factory=list)

    def evidence(self, current_threshold: float | None = None) -> str:
        p = self.point
        lines = [
            f"evidence: {self.rows_used} reviewed rows ({self.rows_decided} rows decided), "
            f"target precision {self.target_precision:.1%} as a one-sided 97.5% lower bound",
            f"proposed threshold {self.threshold:.4f} (margin {self.margin:.2f}): "
            f"precision {p.precision.describe()}, lower bound {p.precision.low:.1%}, "
            f"coverage {p.coverage:.1%} auto-labelled, {p.reviewed_above} reviewed rows above",
        ]
        if self.current is not None and current_threshold is not None:
            c = self.current
            lines.append(
                f"threshold in force {current_threshold:.4f}: precision {c.precision.describe()}, "
                f"coverage {c.coverage:.1%}"
            )
        return "\n".join(lines)


@dataclass
class _Tally:
    """Rows at or above a threshold, per stratum."""

    population: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRATA, 0))
    reviewed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRATA, 0))
    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STRATA, 0))
    auto: int = 0  # every row the rule would auto-label, in a stratum or not

    def add(self, row: DecidedRow) -> None:
        self.auto += 1
        if row.stratum not in self.population:
            return
        self.population[row.stratum] += 1
        if row.correct is not None:
            self.reviewed[row.stratum] += 1
            self.correct[row.stratum] += int(row.correct)

    def point(self, threshold: float, decided: int, level: float) -> ThresholdPoint | None:
        """Post-stratified precision of the rows above the threshold."""
        present = [s for s in STRATA if self.population[s]]
        if not present or any(not self.reviewed[s] for s in present):
            return None  # a stratum above the threshold that staff never saw: no estimate
        total = sum(self.population[s] for s in present)
        estimate = (
            sum(self.population[s] * self.correct[s] / self.reviewed[s] for s in present) / total
        )
        # Kish's effective sample size for weights N_s / n_s.
        n_eff = total * total / sum(self.population[s] ** 2 / self.reviewed[s] for s in present)
        interval = wilson_interval(min(estimate * n_eff, n_eff), n_eff, level)
        assert interval is not None
        return ThresholdPoint(
            threshold=threshold,
            precision=interval,
            coverage=self.auto / decided if decided else 0.0,
            reviewed_above=sum(self.reviewed.values()),
        )


def _auto_labelled(row: DecidedRow, threshold: float, margin: float) -> bool:
    return row.eligible and row.confidence >= threshold and row.margin >= margin


def measure_at(
    rows: Sequence[DecidedRow],
    threshold: float,
    *,
    margin: float = 0.0,
    level: float = DEFAULT_CONFIDENCE_LEVEL,
) -> ThresholdPoint | None:
    """Precision and coverage that the rule (threshold, margin) would have had on these rows."""
    tally = _Tally()
    for row in rows:
        if _auto_labelled(row, threshold, margin):
            tally.add(row)
    return tally.point(threshold, len(rows), level)


def sequence_start_size(target_precision: float, level: float = DEFAULT_CONFIDENCE_LEVEL) -> float:
    """The effective number of rows at which testing starts: enough that a precision three
    quarters of the way from the target to perfect (98.75% for a 95% target) would pass.

    Testing from the very top, where a few rows sit, would make the first test fail on one
    unlucky error and end the sequence there; starting lower is allowed because the start
    depends only on counts, never on staff's answers.
    """
    good = 1 - (1 - target_precision) / 4
    n = 1.0
    while n < 1e7:
        interval = wilson_interval(good * n, n, level)
        if interval is not None and interval.low >= target_precision:
            return n
        n *= 1.02
    return n


def calibrate(
    rows: Sequence[DecidedRow],
    target_precision: float,
    *,
    margin: float = 0.0,
    current_threshold: float | None = None,
    level: float = DEFAULT_CONFIDENCE_LEVEL,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_rows_above: int = DEFAULT_MIN_ROWS_ABOVE,
) -> Calibration:
    """The lowest confidence threshold whose precision has a lower confidence bound at or above
    ``target_precision``, or :class:`CalibrationRefused` saying why there is none.

    Candidates are the confidences of reviewed rows, tested from the highest down, stopping
    at the first that fails (fixed-sequence testing). Choosing the best of many thresholds
    would otherwise pick one whose bound is high by luck; testing in a fixed order and stopping
    at the first failure keeps the chance of proposing a threshold below the target within the
    bound's 2.5%. The order and the candidates depend only on confidences and counts, never on
    whether staff agreed, which is what keeps that guarantee.
    """
    if not 0.0 < target_precision < 1.0:
        raise ValueError(f"target precision must be between 0 and 1, not {target_precision}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be between 0 and 1, not {level}")
    evidence = [r for r in rows if r.correct is not None and r.stratum in STRATA and r.eligible]
    if len(evidence) < min_rows:
        raise CalibrationRefused(
            f"only {len(evidence)} usable reviewed rows for this model version; calibration "
            f"needs at least {min_rows} (reviewed doubtful rows and reviewed audits; "
            "auto-labels that staff corrected do not count)"
        )
    if not any(r.stratum == CONFIDENT for r in evidence):
        raise CalibrationRefused(
            "no reviewed audit rows yet: without them the precision of the confident results "
            "cannot be measured (set LABELER_AUDIT_SHARE above 0 and let staff review audits)"
        )
    start_n = sequence_start_size(target_precision, level)
    candidates = sorted({r.confidence for r in evidence}, reverse=True)
    # One sweep from the top: rows and candidates both in descending confidence.
    ordered = sorted(
        (r for r in rows if r.eligible and r.margin >= margin),
        key=lambda r: r.confidence,
        reverse=True,
    )
    tally, i = _Tally(), 0
    tried: list[ThresholdPoint] = []
    accepted: ThresholdPoint | None = None
    for threshold in candidates:
        while i < len(ordered) and ordered[i].confidence >= threshold:
            tally.add(ordered[i])
            i += 1
        point = tally.point(threshold, len(rows), level)
        if point is None or point.reviewed_above < min_rows_above or point.precision.n < start_n:
            continue  # too little evidence this high up: not a test, so no stop
        tried.append(point)
        if point.precision.low < target_precision:
            break
        accepted = point
    if accepted is None:
        best = max(tried, key=lambda p: p.precision.low, default=None)
        detail = (
            f"; at threshold {best.threshold:.4f} precision is {best.precision.describe()}"
            if best is not None
            else f"; no threshold has enough reviewed rows above it (an effective {start_n:.0f}, "
            "counting a reviewed audit for the confident rows it stands for)"
        )
        raise CalibrationRefused(
            f"no threshold reaches a lower bound of {target_precision:.1%} precision with the "
            f"{len(evidence)} reviewed rows{detail}. Keep reviewing, or lower the target."
        )
    current = None
    if current_threshold is not None:
        current = measure_at(rows, current_threshold, margin=margin, level=level)
    return Calibration(
        threshold=accepted.threshold,
        margin=margin,
        target_precision=target_precision,
        point=accepted,
        rows_used=len(evidence),
        rows_decided=len(rows),
        current=current,
        tried=tried,
    )
