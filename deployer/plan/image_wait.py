"""Whether a release whose tag the registry does not have yet waits for it or goes on to the pull. Pure.

A GitHub release often arrives before the workflow it started has pushed its image. For such a job the
registry's answer to a manifest HEAD decides: the tag is there (the pull runs now), the tag is missing (wait
with a backoff, until `image_wait` from when the job was queued has passed, then fail saying what was
waited for), or anything else (refused credentials, a registry down): the pull runs and meets that answer
itself, under the fault policy it always had. A deploy started by hand never waits for its image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

FIRST_SECONDS = 1.0
# A look costs one manifest HEAD (no pull quota) and a job process: cheap enough to keep the gap after a push short.
MOST_SECONDS = 5.0


class ManifestAnswer(StrEnum):
    """What the registry said of one tag's manifest."""

    PRESENT = "present"  # 200
    MISSING = "missing"  # 404: the repository or the tag is not there (yet)
    REFUSED = "refused"  # 401, 403: the credentials
    OTHER = "other"  # 5xx, no connection, anything else


class ImageStep(StrEnum):
    PULL = "pull"
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True)
class ImageDecision:
    step: ImageStep
    delay: float = 0.0  # seconds before the next look, for WAIT
    reason: str = ""


def look_after(attempt: int, remaining: float) -> float:
    """The wait after the `attempt`-th look found no tag: 1 s doubling to 5 s, never past the end of image_wait."""
    nominal = min(MOST_SECONDS, FIRST_SECONDS * 2 ** max(0, attempt - 1))
    return round(max(0.0, min(nominal, remaining)), 3)


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def decide_image(
    *,
    from_release: bool,
    answer: ManifestAnswer,
    reference: str,
    waited: float,
    image_wait: float,
    attempt: int,
    since: str,
) -> ImageDecision:
    """What to do about the image `reference` before the pull.

    `from_release`: the job was started by a GitHub release (not `deploy` or `redeploy`); `waited`: seconds
    since the job was queued (at `since`, as printed); `attempt`: the looks so far, this one included.
    """
    if not from_release or answer != ManifestAnswer.MISSING:
        return ImageDecision(ImageStep.PULL)
    remaining = image_wait - waited
    if remaining <= 0:
        return ImageDecision(
            ImageStep.FAIL, reason=f"the image {reference} did not appear in {_span(image_wait)} (waited since {since})"
        )
    return ImageDecision(
        ImageStep.WAIT,
        delay=look_after(attempt, remaining),
        reason=f"the image {reference} is not in the registry yet (waiting up to {_span(image_wait)} since {since})",
    )
