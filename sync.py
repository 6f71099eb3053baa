"""The sync: rows in, one result per row out, in single (per user) or bulk mode.

Per customer the order is fixed: an email move first (users/updateEmail), then the profile
update, and the event only once Iterable has accepted that update (or already had it from
an earlier run). Planning is plan.py's, recording answers outcomes.py's; this module drives
the calls, and at the end of a run that saw every row, the customers who left the segment.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from bulk import (
    Answer,
    BatchCall,
    Batcher,
    BatchLimit,
    BatchQueue,
    BulkRow,
    Delivered,
    deliver_events,
    deliver_users,
    event_item,
    user_item,
)
from iterable_client import (
    EVENTS_TRACK_BULK,
    USERS_BULK_UPDATE,
    CallResult,
    IterableClient,
    StopRun,
)
from logger_config import mask_email
from outcomes import FORGOTTEN_CODE, Outcomes, call_failure_reason
from payloads import BY_EMAIL, Customer, SourceRow, UnreadableRow, user_identity
from plan import (
    DELETE_PART,
    PLAN_CHUNK,
    PROFILE_PART,
    Planner,
    Work,
    forgotten_result,
    is_permanent,
    refusal_key,
    still_outstanding,
)
from results import (
    DRY_RUN,
    EMAIL_CHANGE_CONFLICT,
    EMAIL_CHANGE_FORGOTTEN,
    EMAIL_CHANGE_OLD_MISSING,
    FAILED,
    IN_SEGMENT,
    INTERRUPTED,
    LEAVE_GUARD,
    LEFT_DELETED,
    LEFT_SEGMENT,
    OFF_LIST,
    OUT_OF_SEGMENT,
    SKIPPED,
    SUCCESS,
    UNCHANGED,
    ResultsWriter,
    RowResult,
)
from segment import LeaveGuard, Lists, ReadCustomers, leaver_work, plan_leaver
from sync_state import Member, StateError, StateStore

log = logging.getLogger(__name__)

# Bulk mode looks for answers that have come every this many rows (a few milliseconds),
# rather than after every row.
SETTLE_EVERY = 100
# A wait on single mode's work feed looks again this often, whether woken or not.
FEED_RECHECK = 1.0


@dataclass
class Outcome:
    """How the run ended, beyond the per-row results."""

    rows_read: int = 0
    aborted: str | None = None
    stopped: bool = False
    held_back: str | None = None  # why the mass-leave guard held the leavers back


class WorkFeed:
    """Single mode's planned work: put in by the planning thread a batch at a time, taken by
    the worker threads one at a time.

    Taking is a deque pop, with no lock and no wake-up while work is queued: the planner is
    woken once the queue is down to `low`, and an idle worker only when the queue ran dry.
    (A thread pool's submit, future and semaphore cost each user a wake-up or two.)
    """

    def __init__(self, low: int) -> None:
        self._items: deque[Work] = deque()
        self._low = low
        self._changed = threading.Condition()
        self._closed = False
        self._planner_waiting = False
        self._idle = 0  # workers waiting for work

    def wait_for_room(self) -> None:
        """Return once the queue is down to `low`."""
        with self._changed:
            while len(self._items) > self._low:
                self._planner_waiting = True
                self._changed.wait(FEED_RECHECK)
            self._planner_waiting = False

    def put_many(self, items: list[Work]) -> None:
        with self._changed:
            self._items.extend(items)
            if self._idle:
                self._changed.notify_all()

    def close(self) -> None:
        """Nothing more comes: workers finish what is queued, then take() gives None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self) -> Work | None:
        """The next work, waiting for it while the queue is empty; None once closed and empty."""
        items = self._items
        try:
            work = items.popleft()
        except IndexError:
            with self._changed:
                while not items:
                    if self._closed:
                        return None
                    self._idle += 1
                    self._changed.wait(FEED_RECHECK)
                    self._idle -= 1
                work = items.popleft()
        # Read without the lock: a planner that sets it after this pop sees the shorter queue.
        if self._planner_waiting and len(items) <= self._low:
            with self._changed:
                self._changed.notify_all()
        return work


# Customers looked up to tell a rotated key from another Iterable project.
PROJECT_SAMPLE = 5


def check_project(
    state: StateStore, client: IterableClient, identify_by: str, full_refresh: bool
) -> None:
    """Before the first send: whether the state was written for the Iterable project the
    job now talks to. Raises StateError when none of a few customers the state says
    Iterable holds are there; a rotated key finds them, and is recorded."""
    current = (client.base_url, hashlib.sha256(client.api_key_bytes()).hexdigest())
    recorded = state.project()
    if recorded == current:
        return
    sample = [] if full_refresh else state.some_profiles(PROJECT_SAMPLE)
    if sample and not any(_found(client, cid, email, identify_by) for cid, email in sample):
        raise StateError(
            f"the sync state {state.where} was written for another Iterable project "
            f"({recorded[0] or 'unknown'}): none of {len(sample)} customers it says Iterable "
            f"holds are at {client.base_url}, so nothing was sent. Use a new SYNC_STATE_PATH "
            "for this project, or run with --full-refresh to send everything to it"
        )
    if recorded[0] is not None and sample:
        log.info("the API key or the base URL changed; the same Iterable project holds the users")
    state.record_project(*current)


def _found(client: IterableClient, customer_id: int, email: str | None, identify_by: str) -> bool:
    if identify_by == BY_EMAIL:
        return email is not None and _has_user(client.get_user(email))
    return _has_user(client.get_user_by_id(str(customer_id)))


class Syncer:
    """Drives a run: rows through the planner, calls to Iterable, answers to the outcomes."""

    def __init__(
        self,
        *,
        client: IterableClient | None,
        writer: ResultsWriter,
        state: StateStore | None = None,
        candidate: str | None = None,
        full_refresh: bool = False,
        stop: threading.Event | None = None,
        on_rows: Callable[[int], object] = lambda _count: None,
        identify_by: str = BY_EMAIL,
        lists: Lists | None = None,
        delete_deleted: bool = False,
        retry_outstanding: bool = False,
    ) -> None:
        self.client = client
        self.state = state
        self.stop = stop or threading.Event()
        self.identify_by = identify_by
        self.lists = lists
        if lists is not None:
            lists.on_stop = self.abort
        self.delete_deleted = delete_deleted
        self.retry_outstanding = retry_outstanding
        # A dry run (no client) reads the state but never changes it.
        self.may_write_state = state is not None and client is not None
        self.outcomes = Outcomes(
            writer=writer,
            state=state,
            lists=lists,
            may_write_state=self.may_write_state,
            on_rows=on_rows,
        )
        self.planner = Planner(
            state=state,
            may_write_state=self.may_write_state,
            dry_run=client is None,
            keep_listed=self.outcomes.keep_listed,
            candidate=candidate,
            identify_by=identify_by,
            full_refresh=full_refresh,
            retry_outstanding=retry_outstanding,
        )
        self.outcome = Outcome()
        self._abort_lock = threading.Lock()
        # Told how many customers left the segment, before they are done.
        self.on_leavers: Callable[[int], object] = lambda _count: None

    @property
    def on_rows(self) -> Callable[[int], object]:
        return self.outcomes.on_rows

    @on_rows.setter
    def on_rows(self, on_rows: Callable[[int], object]) -> None:
        self.outcomes.on_rows = on_rows

    def close(self) -> None:
        self.planner.close()

    def abort(self, exc: StopRun) -> None:
        with self._abort_lock:
            if self.outcome.aborted is None:
                self.outcome.aborted = str(exc)
                # DEBUG: main() reports it, in one line.
                log.debug("%s; stopping the run", exc)
        self.stop.set()

    def _planned(self, rows: Iterable[SourceRow | UnreadableRow]) -> Iterator[Work]:
        """The rows that need calls, planned a chunk at a time; the others are recorded."""
        source, stop, planner = iter(rows), self.stop, self.planner
        while not self._stopping() and (
            chunk := [planner.prepare(row) for row in itertools.islice(source, PLAN_CHUNK)]
        ):
            known = planner.look_up(chunk)
            for item in chunk:
                if stop.is_set() and self._stopping():
                    return
                self.outcome.rows_read += 1
                planned = planner.plan(item, known)
                if isinstance(planned, Work):
                    yield planned
                else:
                    self.outcomes.record(planned)

    def _stopping(self) -> bool:
        if not self.stop.is_set():
            return False
        # A run that aborted (rejected key, Iterable down) was not stopped by a signal.
        self.outcome.stopped = self.outcome.aborted is None
        return True

    def _finished(self) -> Outcome:
        """A signal that came while the last rows were in flight stopped the run as well
        when it cut a row short; one that came after every row was done did not."""
        if self.stop.is_set() and self.outcome.aborted is None and self.outcomes.interrupted:
            self.outcome.stopped = True
        return self.outcome

    # -- single mode ----------------------------------------------------------------

    def run_single(self, rows: Iterable[SourceRow | UnreadableRow], concurrency: int) -> Outcome:
        """Each user's update then event; `concurrency` threads, each taking the next planned
        user as soon as it is done with one."""
        # Users are planned half of `concurrency` at a time, when the queue is down to as
        # many: a stopping run then has no more than `concurrency` queued to record as
        # interrupted, and the workers still have work while the next ones are planned.
        step = max(1, concurrency // 2)
        feed = WorkFeed(low=step)
        workers = [
            threading.Thread(target=self._single_worker, args=(feed,), name=f"sync_{number}")
            for number in range(concurrency)
        ]
        for worker in workers:
            worker.start()
        try:
            planned = self._planned(rows)
            while True:
                feed.wait_for_room()
                if not (batch := list(itertools.islice(planned, step))):
                    break
                feed.put_many(batch)
        finally:
            feed.close()
            for worker in workers:
                worker.join()
        return self._finished()

    def _single_worker(self, feed: WorkFeed) -> None:
        while (work := feed.take()) is not None:
            self._sync_one(work)

    def _sync_one(self, work: Work) -> None:
        """One customer's calls, in order: email move, profile, event."""
        assert self.client is not None
        outcomes = self.outcomes
        try:
            if work.previous_email is not None and self.identify_by == BY_EMAIL:
                if self.stop.is_set():
                    outcomes.fail(work, INTERRUPTED)
                    return
                if not self.move_email(work):
                    return
            if work.send_user:
                if self.stop.is_set():
                    outcomes.fail(work, INTERRUPTED)
                    return
                call = self.client.update_user(work.payloads.user_update, work.payloads.user_bytes)
                if not outcomes.profile_answered(work, call):
                    return
            else:
                outcomes.profile_unchanged(work)
            if work.send_event:
                call = self.client.track_event(work.payloads.event, work.payloads.event_bytes)
                outcomes.finish_with_event(work, call)
            else:
                outcomes.finish_without_event(work)
        except StopRun as exc:
            outcomes.fail(work, INTERRUPTED)
            self.abort(exc)
        except Exception:
            log.exception("unexpected error for customer %s", work.row.customer_id)
            outcomes.fail(work, "internal_error")

    # -- email changes --------------------------------------------------------------

    def move_email(self, work: Work) -> bool:
        """users/updateEmail from the email Iterable holds to the row's; True when the profile
        update may follow. Only for identify-by-email: by userId the update carries the email.
        """
        assert self.client is not None and work.previous_email is not None
        if work.unsure_move is not None and not self._settle_unsure_move(work):
            return False
        old, new = work.previous_email, work.payloads.email
        if old == new:
            return True  # the earlier move went through
        call = self.client.update_email(old, new)
        work.result.update_email = call.summary()
        if not call.answered:
            # Not idempotent: a resend would find the old email gone if this one went
            # through, so Iterable is asked where the profile is instead. Until it says,
            # the state keeps that the move may have happened (a stop or a crash while
            # asking must not lose it).
            if self.may_write_state:
                assert self.state is not None
                self.state.move_unsure(work.row.customer_id, new)
            where = self._where_is(old, new)
            if where == new:
                self._email_moved(work)
                return True
            if where == old and self.may_write_state:
                assert self.state is not None
                self.state.move_unsure(work.row.customer_id, None)
            self.outcomes.fail(work, call_failure_reason(call))
            return False
        if call.ok:
            self._email_moved(work)
            return True
        if call.code == FORGOTTEN_CODE:
            return self._email_forgotten(work, old, new)
        if call.http_status == 409:
            self._email_not_moved(
                work,
                EMAIL_CHANGE_CONFLICT,
                f"{mask_email(new)} already has a profile in Iterable; the old profile was "
                "left alone and this one updated",
            )
            return True
        if call.no_such_user:
            if self.may_write_state:
                assert self.state is not None
                self.state.moved_away(work.row.customer_id, new)
            self._email_not_moved(
                work,
                EMAIL_CHANGE_OLD_MISSING,
                "Iterable has no profile under the previous email; a profile is created under "
                "the new one",
            )
            return True
        refused = refusal_key(PROFILE_PART, work.user_fingerprint)
        self.outcomes.fail(work, call_failure_reason(call), refused if is_permanent(call) else None)
        return False

    def _email_forgotten(self, work: Work, old: str, new: str) -> bool:
        """updateEmail said one of the two addresses is forgotten; which one decides
        whether the profile update may follow (True) or the row ends here (False)."""
        assert self.client is not None
        lookup = self.client.get_user(old)
        if not lookup.ok:
            # Not knowing which, the run changes nothing: the move is tried again next run.
            self.outcomes.fail(work, call_failure_reason(lookup))
            return False
        if _has_user(lookup):
            # The new address is the forgotten one: the profile stays where it is, and
            # the customer is not sent until their email changes again.
            if self.may_write_state:
                assert self.state is not None
                self.state.forgotten(work.row.customer_id, new, profile_gone=False)
                if work.result.segment == LEFT_SEGMENT:
                    self.state.left(work.row.customer_id, None)
            if work.listed_as is not None and self.lists is not None:
                self.lists.unsubscribe(work.row.customer_id, work.listed_as, work.result)
            self.outcomes.record(forgotten_result(work.result))
            return False
        # Iterable forgot the old address: the profile goes in under the new email as a new
        # one.
        if self.may_write_state:
            assert self.state is not None
            self.state.moved_away(work.row.customer_id, new, forgotten_email=old)
        self._email_not_moved(
            work,
            EMAIL_CHANGE_FORGOTTEN,
            "Iterable says the previous email was forgotten; a profile is created under "
            "the new one",
        )
        return True

    def _where_is(self, old: str, new: str) -> str | None:
        """Which of the two emails the profile is under after a move whose answer was lost:
        `new` if Iterable has it and not `old`, else `old`; None when Iterable could not say."""
        assert self.client is not None
        found_new, found_old = self.client.get_user(new), self.client.get_user(old)
        if not (found_new.ok and found_old.ok):
            return None
        return new if _has_user(found_new) and not _has_user(found_old) else old

    def _settle_unsure_move(self, work: Work) -> bool:
        """Before moving again: did the earlier move whose answer was lost go through? True
        when that is known (previous_email is then where the profile is)."""
        old, maybe = work.previous_email, work.unsure_move
        assert old is not None and maybe is not None
        where = self._where_is(old, maybe)
        if where is None:
            self.outcomes.fail(work, "no_response")  # asked again next run
            return False
        if where == maybe:
            self._email_moved(work, to=maybe)
            work.previous_email = work.result.previous_email = maybe
        elif self.may_write_state:
            assert self.state is not None
            self.state.move_unsure(work.row.customer_id, None)
        work.unsure_move = None
        return True

    def _email_moved(self, work: Work, to: str | None = None) -> None:
        """Iterable moved the profile from the previous email to `to` (the row's)."""
        old, new = work.previous_email, to or work.payloads.email
        assert old is not None
        if self.state is not None:
            self.state.email_moved(work.row.customer_id, old, new)
        if work.listed_as == old:
            work.listed_as = new  # Iterable moved the list membership with the profile

    def _email_not_moved(self, work: Work, warning: str, detail: str) -> None:
        """The old profile stays as it is; the row's update goes to the new email."""
        work.result.warnings.append(f"{warning}: {detail}")
        log.warning(
            "customer %s: email change from %s to %s: %s: %s",
            work.row.customer_id,
            mask_email(work.previous_email),
            mask_email(work.payloads.email),
            warning,
            detail,
        )
        if warning != EMAIL_CHANGE_CONFLICT and work.result.segment == IN_SEGMENT:
            # The old profile is gone with its events: the new one gets the latest again.
            work.send_event = True
        listed, old = work.listed_as is not None, work.previous_email
        if listed and old is not None and work.listed_as == old and self.lists:
            self.lists.unsubscribe(work.row.customer_id, old, work.result)
        # A member of the segment is subscribed under the new email. A leaver who was on the
        # list is unsubscribed under it too: an earlier move whose answer was lost may have
        # taken the membership there.
        leaving = work.result.segment != IN_SEGMENT
        work.listed_as = work.payloads.identifier if listed and leaving else None

    # -- bulk mode ----------------------------------------------------------------

    def run_bulk(
        self, rows: Iterable[SourceRow | UnreadableRow], batch_size: int, events_batch_size: int
    ) -> Outcome:
        """users/bulkUpdate in batches, then events/trackBulk for the users Iterable accepted.

        Pool threads only talk to Iterable; rows are planned and answers applied (results,
        sync state, log) on this thread. Applying answers on the pool threads while this
        one planned rows made the threads hand the GIL to each other at every SQLite call
        and log write, which cost more CPU than the work itself.
        """
        assert self.client is not None
        client, outcomes = self.client, self.outcomes
        with (
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulk-users") as user_pool,
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulk-events") as event_pool,
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="email-change") as single_pool,
        ):
            user_limit = BatchLimit(USERS_BULK_UPDATE, batch_size)
            event_limit = BatchLimit(EVENTS_TRACK_BULK, events_batch_size)
            send_events = functools.partial(deliver_events, limit=event_limit)
            send_users = functools.partial(deliver_users, limit=user_limit)
            event_batches = BatchQueue(
                submit=lambda batch: event_pool.submit(self._deliver, send_events, client, batch),
                settle_one=lambda call: self._settle(call, outcomes.apply_event_answers),
            )
            events = Batcher(event_limit, event_batches.send, event_item)

            def settle_user_batch(call: BatchCall) -> None:
                events.add_many(self._settle(call, outcomes.apply_user_answers))
                events.flush()

            user_batches = BatchQueue(
                submit=lambda batch: user_pool.submit(self._deliver, send_users, client, batch),
                settle_one=settle_user_batch,
            )
            users = Batcher(user_limit, user_batches.send, user_item)
            for index, work in enumerate(self._planned(rows)):
                if index % SETTLE_EVERY == 0:
                    user_batches.settle(wait=False)
                    event_batches.settle(wait=False)
                if work.previous_email is not None:
                    # Iterable processes single and bulk calls apart: a customer whose
                    # email changes goes through the single calls for this run.
                    single_pool.submit(self._sync_one, work)
                    continue
                if work.send_user:
                    users.add(work)
                else:
                    outcomes.profile_unchanged(work)
                    if work.send_event:
                        events.add(work)
                    else:
                        outcomes.finish_without_event(work)
            users.flush()
            user_batches.drain()
            events.flush()
            event_batches.drain()
        return self._finished()

    def _deliver(
        self,
        send: Callable[[IterableClient, Sequence[BulkRow]], list[Answer]],
        client: IterableClient,
        batch: Sequence[BulkRow],
    ) -> Delivered:
        """On a pool thread: send one batch and collect its answers; no row is touched here.

        A rejected key or an unreachable Iterable aborts the run at once; anything else
        fails only this batch.
        """
        done = Delivered()
        if self.stop.is_set():
            done.interrupted = True
            return done
        try:
            done.answers = send(client, batch)
        except StopRun as exc:
            done.interrupted = True
            self.abort(exc)
        except Exception:
            log.exception("unexpected error in a batch of %d users", len(batch))
            done.unexpected = True
        return done

    def _settle(
        self,
        call: BatchCall,
        apply: Callable[[list[Answer]], list[Work]],
    ) -> list[Work]:
        """On this thread: record a batch's answers; returns what apply returns, or []."""
        done = call.future.result()
        reason: str | None = None
        accepted: list[Work] = []
        if done.interrupted:
            # Outcomes a split batch got before the stop are dropped too: its rows are all
            # sent again by the next run, which the idempotent writes absorb.
            reason = INTERRUPTED
        else:
            try:
                accepted = apply(done.answers)
            except Exception:
                log.exception("unexpected error in a batch of %d users", len(call.batch))
                done.unexpected = True
            if done.unexpected:
                reason = "internal_error"
        if reason is None:
            return accepted
        for row in call.batch:
            self.outcomes.fail(cast(Work, row), reason)
        return []

    # -- after every row: the segment --------------------------------------------

    def finish_segment(
        self, read_customers: ReadCustomers, concurrency: int, guard: LeaveGuard | None = None
    ) -> None:
        """Customers who left the segment, then the list's last changes.

        Only after a run that saw every row: a stopped run cannot tell who left. When the
        guard holds the leavers back, nothing is sent for them and they stay in the segment.
        """
        if self.state is None or self.stop.is_set() or self.outcome.aborted:
            return
        leaving, chunks = self.state.left_segment()
        verdict = guard.verdict(leaving, self.state.segment_at_start) if guard else None
        if verdict is not None:
            self.outcome.held_back = verdict
            for chunk in chunks:
                self.outcomes.record_many([_held_back(member) for member in chunk])
            return
        if leaving:
            self.on_leavers(leaving)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="leavers") as pool:
            for chunk in chunks:
                customers = read_customers([member.customer_id for member in chunk])
                for member in chunk:
                    if self.stop.is_set():
                        break
                    self._leaver(member, customers.get(member.customer_id), pool)
        if self.lists is not None and not self.stop.is_set():
            self.lists.flush()
            for member in self.state.list_members_not_seen():
                result = RowResult(
                    member.customer_id, member.email, SKIPPED, OFF_LIST, segment=OUT_OF_SEGMENT
                )
                result.detail = "out of the segment since an earlier run, still on the list"
                self._unlist(member, result)
                self.outcomes.record(result)
            self.lists.flush()

    def _leaver(self, member: Member, customer: Customer | None, pool: ThreadPoolExecutor) -> None:
        if member.unsure_move is not None and self.client is not None:
            settled = self._settle_leavers_move(member)
            if settled is None:
                return
            member = settled
        if customer is None:
            self._deleted(member, pool)
            return
        update = plan_leaver(member, customer, self.identify_by)
        result = RowResult(
            member.customer_id, member.email, SKIPPED, UNCHANGED, segment=LEFT_SEGMENT
        )
        if update is None:
            result.detail = "left the segment; Iterable already holds the current fields"
            self._unlist(member, result)
            if self.may_write_state:
                assert self.state is not None
                self.state.left(member.customer_id, None)
            self.outcomes.record(result)
            return
        # Off the list once the profile is updated, under the identifier it has then.
        work = leaver_work(member, update)
        if self._refused_before(
            work.result, member.customer_id, PROFILE_PART, work.user_fingerprint
        ):
            return
        if self.client is None:
            work.result.status, work.result.reason = SKIPPED, DRY_RUN
            work.result.payloads = {"user_update": update.user_update, "event_track": None}
            if update.previous_email is not None and self.identify_by == BY_EMAIL:
                work.result.payloads["update_email"] = {
                    "currentEmail": update.previous_email,
                    "newEmail": update.email,
                }
            self.outcomes.keep_listed(work)
            self.outcomes.record(work.result)
            return
        pool.submit(self._sync_one, work)

    def _settle_leavers_move(self, member: Member) -> Member | None:
        """A leaver whose last email move got no answer: where the profile is decides what
        is updated, deleted or unsubscribed. None (the leaver is tried again next run) when
        Iterable cannot say."""
        old, maybe = member.email, member.unsure_move
        assert maybe is not None
        where = self._where_is(old, maybe) if old is not None else maybe
        if where is None:
            result = RowResult(member.customer_id, old, FAILED, "no_response", segment=LEFT_SEGMENT)
            result.detail = "an earlier email move got no answer; tried again next run"
            self.outcomes.record(result)
            return None
        if self.may_write_state:
            assert self.state is not None
            if where == maybe and old is not None:
                self.state.email_moved(member.customer_id, old, maybe)
            else:
                self.state.move_unsure(member.customer_id, None)
        listed = member.list_identifier
        if where == maybe and listed == old and self.identify_by == BY_EMAIL:
            listed = maybe  # Iterable moved the membership with the profile
        return dataclasses.replace(member, email=where, list_identifier=listed, unsure_move=None)

    def _unlist(self, member: Member, result: RowResult | None = None) -> None:
        """Off the list, under the identifier the state has; `result`, the leaver's row,
        records it."""
        if self.lists is None:
            return
        if member.list_identifier is not None:
            self.lists.unsubscribe(member.customer_id, member.list_identifier, result)
        unsure = member.unsure_move
        if unsure is not None and self.identify_by == BY_EMAIL and unsure != member.list_identifier:
            # A move whose answer was lost may have taken the membership there.
            self.lists.unsubscribe(member.customer_id, unsure)

    def _deleted(self, member: Member, pool: ThreadPoolExecutor) -> None:
        """The customer's row is gone from the database."""
        result = RowResult(
            member.customer_id, member.email, SKIPPED, LEFT_DELETED, segment=LEFT_SEGMENT
        )
        self._unlist(member, result)
        identity = _identity(member, self.identify_by)
        if self.delete_deleted and identity is not None and self.client is not None:
            if not self._refused_before(result, member.customer_id, DELETE_PART, "-"):
                pool.submit(self._delete_user, member.customer_id, identity, result)
            return
        gone = "no longer in the customers table"
        if self.delete_deleted and self.client is None and identity is not None:
            result.payloads = {**(result.payloads or {}), "delete_user": identity}
            result.detail = self._with_list(result, f"{gone}; would be deleted in Iterable")
        elif result.list_action is None:
            result.detail = f"{gone}; nothing sent"
        else:
            result.detail = self._with_list(result, gone) + ", nothing else sent"
        if self.may_write_state:
            assert self.state is not None
            self.state.deleted(member.customer_id)
        self.outcomes.record(result)

    def _delete_user(self, customer_id: int, identity: dict[str, str], result: RowResult) -> None:
        assert self.client is not None and self.state is not None
        try:
            call = self.client.delete_user(identity)
        except StopRun as exc:
            result.status, result.reason = FAILED, INTERRUPTED
            self.outcomes.record(result)
            self.abort(exc)
            return
        result.delete_user = call.summary()
        if call.ok or call.no_such_user:
            result.status = SUCCESS
            result.detail = self._with_list(
                result,
                "deleted in Iterable (ON_DELETED_CUSTOMER=delete)"
                if call.ok
                else "Iterable had no such user any more; nothing left to delete",
            )
            self.state.deleted(customer_id, in_iterable=True)
        else:
            result.status, result.reason = FAILED, call_failure_reason(call)
            if is_permanent(call):
                self.state.refused(customer_id, refusal_key(DELETE_PART, "-"), result.reason)
        self.outcomes.record(result)

    def _with_list(self, result: RowResult, detail: str) -> str:
        """A leaver's detail, and the list unsubscribe sent for them."""
        if result.list_action is None or self.lists is None:
            return detail
        done = "would be unsubscribed" if self.lists.dry_run else "unsubscribed"
        return f"{detail}; {done} from list {self.lists.list_id}"

    def _refused_before(self, result: RowResult, customer_id: int, part: str, digest: str) -> bool:
        """A leaver's call Iterable refused for good, for the same data: recorded as still
        outstanding (True), not sent again; the outstanding rule as for Query 2's rows."""
        if self.state is None or self.retry_outstanding:
            return False
        refusal = self.state.refusal(customer_id)
        if refusal is None or refusal.fingerprint != refusal_key(part, digest):
            return False
        still_outstanding(result, refusal)
        self.outcomes.record(result)
        return True


def _held_back(member: Member) -> RowResult:
    result = RowResult(member.customer_id, member.email, SKIPPED, LEAVE_GUARD, segment=LEFT_SEGMENT)
    result.detail = "would leave the segment; held back by the mass-leave guard, nothing sent"
    return result


def _has_user(call: CallResult) -> bool:
    """users/getByEmail found someone (its "user" is empty for nobody)."""
    return call.ok and bool((call.body or {}).get("user"))


def _identity(member: Member, identify_by: str) -> dict[str, str] | None:
    """How a leaver is named in a call: None when by email and no email is known."""
    if member.email is None and identify_by == BY_EMAIL:
        return None
    return user_identity(member.customer_id, member.email or "", identify_by)
