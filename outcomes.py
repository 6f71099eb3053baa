"""Outcomes: what each answer from Iterable comes to, recorded once for both modes.

A row's result goes to the results file (and a new failure to the log); what Iterable
accepted goes to the sync state; a profile that is up to date moves the customer on or
off the list. The outstanding rule decides what a failure leaves in the state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from bulk import Answer
from iterable_client import CallResult
from logger_config import mask_email
from plan import (
    EVENT_PART,
    PROFILE_PART,
    Work,
    forgotten_result,
    is_permanent,
    refusal_key,
    still_outstanding,
)
from results import FAILED, IN_SEGMENT, INTERRUPTED, UNCHANGED, ResultsWriter, RowResult
from segment import Lists
from sync_state import AcceptedUser, StateStore

log = logging.getLogger(__name__)

FORGOTTEN_CODE = "ForgottenUserError"


def call_failure_reason(call: CallResult) -> str:
    """A stable reason for a failed call: Iterable's code, the HTTP status, or no_response."""
    if call.interrupted:
        return INTERRUPTED
    if call.code and call.code != "Success":
        return call.code
    if call.http_status is not None:
        return f"http_{call.http_status}"
    return "no_response"


class Outcomes:
    """Records rows' results, and what Iterable accepted, in the results file, the sync
    state and the list."""

    def __init__(
        self,
        *,
        writer: ResultsWriter,
        state: StateStore | None,
        lists: Lists | None,
        may_write_state: bool,
        on_rows: Callable[[int], object] = lambda _count: None,
    ) -> None:
        self.writer = writer
        self.state = state
        self.lists = lists
        self.may_write_state = may_write_state
        self.on_rows = on_rows  # told how many rows were recorded, after each record
        self.interrupted = False  # a row was cut short by a stopping run

    def record(self, result: RowResult) -> None:
        self.record_many([result])

    def record_many(self, results: Sequence[RowResult]) -> None:
        """Every row's result goes to the results file; a new failure also to the log.

        Rows that succeed or are skipped are not logged one by one: the results file has
        them, and a line per row cost as much CPU as reading the row.
        """
        self.writer.add_many(results)
        self.on_rows(len(results))
        for result in results:
            # Rows a stopping run interrupts are counted in the summary, not one warning
            # each; rows still failing as before are counted as outstanding.
            if result.status == FAILED and not result.outstanding and result.reason != INTERRUPTED:
                log.warning(
                    "customer %s (%s): failed %s%s",
                    result.customer_id,
                    mask_email(result.email),
                    result.reason,
                    f" ({result.detail})" if result.detail else "",
                )

    # -- the profile --------------------------------------------------------------------

    def profile_answered(self, work: Work, call: CallResult, failure: str | None = None) -> bool:
        """Record the profile update's outcome; True when the event may follow."""
        if self._profile_accepted(work, call, failure):
            self._store_profiles([work])
            return True
        return False

    def profile_unchanged(self, work: Work) -> None:
        """Iterable already holds the profile: no call was made for it."""
        work.result.user_update = {"skipped": UNCHANGED}

    def _profile_accepted(self, work: Work, call: CallResult, failure: str | None) -> bool:
        """The profile update's outcome, all but the sync state; True if it was accepted.
        `failure` is what a bulk answer says of this row, when the call itself went well."""
        work.result.user_update = call.summary()
        if failure is None and call.ok:
            self.keep_listed(work)
            return True
        self._failed_call(work, call, failure, refusal_key(PROFILE_PART, work.user_fingerprint))
        return False

    def _store_profiles(self, accepted: Sequence[Work]) -> None:
        if self.state is not None and accepted:
            self.state.users_accepted(
                [
                    AcceptedUser(
                        work.row.customer_id,
                        work.user_fingerprint,
                        work.payloads.email,
                        work.payloads.profile,
                        work.result.segment == IN_SEGMENT,
                        work.had_refusal,
                    )
                    for work in accepted
                ]
            )

    # -- the event, which ends the row ------------------------------------------------------

    def finish_with_event(self, work: Work, call: CallResult, failure: str | None = None) -> None:
        """Record the event's outcome, and with it the row."""
        if self._event_accepted(work, call, failure):
            if self.state is not None:
                self.state.event_accepted(work.event_id, work.row.customer_id)
            self.record(work.result)

    def finish_without_event(self, work: Work) -> None:
        """Record a row whose profile is settled and that sends no event (Iterable has it,
        it was refused for good, or the customer left the segment)."""
        if work.event_refused is not None:
            still_outstanding(work.result, work.event_refused)
        elif work.result.segment == IN_SEGMENT:
            work.result.event_track = {"skipped": UNCHANGED}
        self.record(work.result)

    def _event_accepted(self, work: Work, call: CallResult, failure: str | None) -> bool:
        """The event's outcome; a failure is recorded here, an accepted event by the caller."""
        work.result.event_track = call.summary()
        if failure is None and call.ok:
            return True
        key = refusal_key(EVENT_PART, work.payloads.event_fingerprint)
        self._failed_call(work, call, failure, key)
        return False

    # -- bulk answers -------------------------------------------------------------------------

    def apply_user_answers(self, answers: Iterable[Answer]) -> list[Work]:
        """Record users/bulkUpdate answers; returns the rows whose events may now be sent."""
        accepted = [work for answer in answers for work in self._profiles_in(answer)]
        self._store_profiles(accepted)
        for work in accepted:
            if not work.send_event:
                self.finish_without_event(work)
        return [work for work in accepted if work.send_event]

    def apply_event_answers(self, answers: Iterable[Answer]) -> list[Work]:
        accepted = [work for answer in answers for work in self._events_in(answer)]
        if self.state is not None:
            self.state.events_accepted([(work.event_id, work.row.customer_id) for work in accepted])
        self.record_many([work.result for work in accepted])
        return []

    def _profiles_in(self, answer: Answer) -> list[Work]:
        """The rows of a bulk answer whose profiles Iterable accepted, recorded as such."""
        rows, call, failures = _answered(answer)
        if call.ok and not failures:  # the usual case, without a call a row: all accepted
            summary = call.summary()
            for work in rows:
                work.result.user_update = summary
            if self.lists is not None:
                for work in rows:
                    self.keep_listed(work)
            return list(rows)
        return [
            work
            for position, work in enumerate(rows)
            if self._profile_accepted(work, call, failures.get(position))
        ]

    def _events_in(self, answer: Answer) -> list[Work]:
        rows, call, failures = _answered(answer)
        if call.ok and not failures:
            summary = call.summary()
            for work in rows:
                work.result.event_track = summary
            return list(rows)
        return [
            work
            for position, work in enumerate(rows)
            if self._event_accepted(work, call, failures.get(position))
        ]

    # -- failures -------------------------------------------------------------------------------

    def _failed_call(self, work: Work, call: CallResult, failure: str | None, refused: str) -> None:
        """A call that failed; `refused` is what the state records if it failed for good."""
        reason = failure or call_failure_reason(call)
        if reason == FORGOTTEN_CODE:
            self.forgotten(work)
            return
        self.fail(work, reason, refused if is_permanent(call, failure) else None)

    def forgotten(self, work: Work, email: str | None = None) -> None:
        """Iterable says the user (under `email`, the row's by default) was forgotten."""
        if self.may_write_state:
            assert self.state is not None
            self.state.forgotten(work.row.customer_id, email or work.payloads.email)
        self.record(forgotten_result(work.result))

    def fail(self, work: Work, reason: str, refused: str | None = None) -> None:
        """Record a failed row; with `refused` (see plan.refusal_key), one that will fail
        again with the same data, which later runs report as outstanding instead."""
        work.result.status, work.result.reason = FAILED, reason
        self.interrupted = self.interrupted or reason == INTERRUPTED
        if refused is not None and self.state is not None and reason != INTERRUPTED:
            self.state.refused(work.row.customer_id, refused, reason)
        self.record(work.result)

    # -- the list -------------------------------------------------------------------------------

    def keep_listed(self, work: Work) -> None:
        """The customer's profile is up to date in Iterable: a member of the segment goes on
        the list (once), a leaver comes off it, under the identifier the profile has now."""
        if self.lists is None:
            return
        if work.result.segment == IN_SEGMENT:
            if work.listed_as != work.payloads.identifier:
                payloads = work.payloads
                self.lists.subscribe(
                    work.row.customer_id, payloads.identifier, payloads.email, work.result
                )
        elif work.listed_as is not None:
            self.lists.unsubscribe(work.row.customer_id, work.payloads.identifier, work.result)


def _answered(answer: Answer) -> tuple[Sequence[Work], CallResult, Mapping[int, str]]:
    """A bulk answer with its rows as the Work this module sent (one cast, not one a row)."""
    return cast("tuple[Sequence[Work], CallResult, Mapping[int, str]]", answer)
