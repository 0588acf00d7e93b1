"""The in-place restart policy (``spec.restartStrategy: InPlace``, docs/recovery.md): a process
that exits non-zero in the current generation, or a worker pod that failed or vanished while the
master lives, is judged with the same rules as a failed pod (:func:`etha.job.policies.decide` on
the process's exit code, ``spec.maxRestarts``, the backoff); a restart keeps the pods (a failed
one alone is made again, under the same name) and asks the master for the next rendezvous
generation. The master gone or failed is a Recreate (the failure policy's). Pure.

Generations: ``status.generation`` counts every restart of the job, in place or not; the master
of an attempt counts its own from 0, so the master's generation is ``status.generation`` less
the one the attempt started at (``status.attemptSpec.generation``). The request for the next
generation is idempotent (the master answers 200 for the generation it is at): a look that
finds the master behind the status (a failed request, an operator restarted midway) asks again.

Phases: ``Restarting`` from the failure seen until every rank's agent started the new
generation's process, then ``Running`` again, as a Recreate's new attempt is ``Running`` once its
pods run: the phase says the job's processes run, never that they met. ``status.rendezvous`` is
reset with the restart to the new generation's (nobody joined it yet) and fills as its ranks
join its store (:mod:`.joins`); ``etha_recovery_seconds`` ends when every rank joined it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from etha.job import constants as c
from etha.job.names import status_count, worker_name
from etha.job.pods import parse_time, pod_phase, timestamp
from etha.job.policies import Failure, Verdict, decide
from etha.operator.reconcile.conditions import Event, condition, restarting, set_condition
from etha.operator.reconcile.creation import creation
from etha.operator.reconcile.events import MasterEvents, ProcessExit
from etha.operator.reconcile.failure import (
    attempt_failures,
    describe,
    failure,
    first_failure,
    job_ends,
    last_failure,
    pod_of,
    restart_plan,
)
from etha.operator.reconcile.joins import generation_base, generation_view, master_generation
from etha.operator.reconcile.model import (
    Actions,
    Attempt,
    GenerationRequest,
    Observed,
    in_place_refused,
)

#: Seconds between two requests for a generation the master has not confirmed yet.
RETRY_SECONDS = 1.0
#: Seconds between two looks while the ranks of a new generation start (the master's long poll
#: wakes the job sooner; this is the safety net).
STARTING_RECHECK_SECONDS = 5.0


def recovering(status: Any, attempt: int) -> bool:
    """A restart in place of this attempt is under way (Restarting until every rank started)."""
    last = status.get("lastRestart") or {}
    return (
        status.get("phase") == c.PHASE_RESTARTING
        and last.get("strategy") == c.RESTART_IN_PLACE
        and last.get("attempt") == attempt
    )


def in_place(observed: Observed, attempt: Attempt) -> Actions | None:
    """A failure restarted in place, a restart in place carried on, or None (no failure, or one
    for the other policies: the master gone, a job that Recreates)."""
    if not attempt.in_place:
        return None
    master = attempt.master
    if master is not None and observed.events is None and master_usage_error(master):  # (any phase)
        return fall_back(
            observed, attempt, c.REASON_MASTER_TOO_OLD, f"pod {master['metadata']['name']} exited 2"
        )
    if attempt.phase not in (c.PHASE_RUNNING, c.PHASE_RESTARTING):
        return None
    status = observed.status
    under_way = recovering(status, attempt.number)
    if attempt.phase == c.PHASE_RESTARTING and not under_way:
        return None  # a Recreate's new attempt starting
    if master is None or pod_phase(master) != "Running":
        return None  # the master holds the generations: without it, a Recreate
    events = observed.events
    pods = [  # (a container the kubelet restarted, restartPolicy OnFailure: its agent rejoins)
        f
        for f in attempt_failures(observed, attempt)
        if f.rank is not None
        and pod_phase(attempt.workers.get(f.rank) or {"status": {"phase": "Failed"}}) == "Failed"
    ]
    if pods:
        first = first_failure(pods)
        assert first is not None and first.rank is not None
        never_started = events is not None and first.rank not in events.started
        if pod_phase(attempt.workers.get(first.rank) or {}) == "Failed" and never_started:
            return agent_not_runnable(observed, attempt, first)
        return restart_in_place(observed, attempt, first, delete=[first.pod])
    generation = master_generation(status)
    exits = events.failures(generation) if events is not None and events.generation == generation else []
    if exits:
        return restart_in_place(observed, attempt, process_failure(attempt, exits[0]), exit_=exits[0])
    if under_way:
        return carry_on(observed, attempt, events, generation)
    return None


def process_failure(attempt: Attempt, exit_: ProcessExit) -> Failure:
    """A process's exit as the failure rules see a pod's: its worker container's exit code."""
    container = str(((attempt.job.template.get("spec") or {}).get("containers") or [{}])[0].get("name"))
    how = f", signal {exit_.signal}" if exit_.signal else ""
    pod = worker_name(attempt.job.name, attempt.number, exit_.rank)
    return Failure(
        pod=pod,
        rank=exit_.rank,
        exit_codes=((container, exit_.exit_code),),
        conditions=(),
        detail=(
            f"pod {pod}: the process of rank {exit_.rank} exited with exit code {exit_.exit_code}"
            f"{how} in generation {exit_.generation}"
        ),
    )


def restart_in_place(
    observed: Observed,
    attempt: Attempt,
    first: Failure,
    exit_: ProcessExit | None = None,
    delete: list[str] | None = None,
    verdict: Verdict | None = None,
) -> Actions:
    """Judge ``first`` (or take ``verdict``: a stall's): the job ends (FailJob, no restarts left)
    or the next generation starts after the backoff, in the pods kept (``delete``: a failed pod,
    made again alone)."""
    job, now, status = observed.job, observed.now, observed.status
    verdict = verdict or decide(job.failure_rules, first)
    what = f"{pod_of(first)} {first.detail}" if exit_ is None and first.pod else first.detail
    seen = Actions(status={"lastFailure": last_failure(first, verdict, attempt.number, now)})
    ended = job_ends(observed, attempt, verdict, what)
    if ended is not None:
        return seen.then(ended)
    in_a_row, delay, starts, counted, counting = restart_plan(observed, attempt, verdict, c.RESTART_IN_PLACE)
    generation = status_count(status.get("generation")) + 1
    kept = "the other pods kept" if delete else "every pod kept"
    message = (
        f"{what}; {describe(verdict)}; {counting}; in place: generation {generation} starts at "
        f"{timestamp(starts)} (in {delay:g}s), {kept}."
    )
    conditions = restarting(attempt.conditions, c.REASON_RESTARTING_IN_PLACE, message, now)
    last: dict[str, Any] = {
        "strategy": c.RESTART_IN_PLACE,
        "reason": what,
        "generation": generation,
        "attempt": attempt.number,
        "time": timestamp(now),
    }
    if first.rank is not None:
        last["rank"] = first.rank
    if first.exit_codes:
        last["exitCode"] = first.exit_codes[0][1]
    actions = Actions(
        delete_pods=list(delete or []),
        status={
            "reason": None,
            "phase": c.PHASE_RESTARTING,
            "restarts": attempt.restarts + 1,
            "restartsCountedTowardsMax": counted,
            "consecutiveRestarts": in_a_row + 1,
            "restartsInPlace": status_count(status.get("restartsInPlace")) + 1,
            "generation": generation,
            "nextGenerationTime": timestamp(starts),
            "lastRestart": last,
            "conditions": conditions,
            # The new generation's ranks join again: who joined the last one no longer counts.
            "rendezvous": generation_view(job, attempt.number, generation, starts),
        },
        events=[Event("Warning", c.REASON_RESTARTING_IN_PLACE, message)],
        requeue_after=delay,
    )
    if delay <= 0:
        actions.next_generation = request(observed, attempt, generation, what)
        actions.requeue_after = RETRY_SECONDS
    return seen.then(actions)


def request(observed: Observed, attempt: Attempt, generation: int, reason: str) -> GenerationRequest | None:
    """The request that moves the attempt's master to the job's ``generation``."""
    if observed.token is None or attempt.master is None:
        return None
    base = generation_base(observed.status)
    return GenerationRequest(
        master=attempt.master["metadata"]["name"],
        generation=max(0, generation - base),
        reason=reason[:200],
        token=observed.token,
    )


def carry_on(observed: Observed, attempt: Attempt, events: MasterEvents | None, generation: int) -> Actions:
    """A restart in place under way: the backoff, then the request (again until the master is
    there), then waiting for every rank's agent to start the generation; a pod made again is
    created meanwhile. Done: Running again."""
    status, now = observed.status, observed.now
    made = creation(observed, replace(attempt, phase=c.PHASE_RUNNING))  # a failed pod made again
    made.status["phase"] = c.PHASE_RESTARTING
    made.status.pop("conditions", None)
    made.events = [e for e in made.events if e.created is not None]
    starts = parse_time(status.get("nextGenerationTime"))
    wait = (starts - now).total_seconds() if starts is not None else 0.0
    if wait > 0:
        made.requeue_after = wait if made.requeue_after is None else min(made.requeue_after, wait)
        return made
    if events is None or events.generation < generation:
        last = status.get("lastRestart") or {}
        total = status_count(status.get("generation"))
        made.next_generation = request(
            observed, attempt, total, str(last.get("reason") or "restart in place")
        )
        made.requeue_after = RETRY_SECONDS if made.requeue_after is None else min(made.requeue_after, 1.0)
        return made
    waiting = [r for r, p in attempt.workers.items() if p is None or pod_phase(p) != "Succeeded"]
    if any(attempt.workers[r] is None or events.started.get(r, -1) < generation for r in waiting):
        made.requeue_after = (
            STARTING_RECHECK_SECONDS if made.requeue_after is None else min(made.requeue_after, 5.0)
        )
        return made
    message = (
        f"Every rank of generation {status_count(status.get('generation'))} started, "
        f"in the pods of attempt {attempt.number}."
    )
    conditions = set_condition(
        attempt.conditions,
        condition(c.COND_RUNNING, True, "AllRanksStarted", message, now),
    )
    conditions = set_condition(
        conditions, condition(c.COND_RESTARTING, False, c.REASON_RESTARTED, message, now)
    )
    made.status.update(phase=c.PHASE_RUNNING, conditions=conditions, nextGenerationTime=None)
    made.events.append(Event("Normal", c.REASON_RESTARTED, message))
    return made


def master_usage_error(master: dict[str, Any]) -> bool:
    """The master pod Failed with exit code 2 (argparse's usage error: an etha that does not
    know --agent-port)."""
    if pod_phase(master) != "Failed":
        return False
    for cs in (master.get("status") or {}).get("containerStatuses") or []:
        if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode") == 2:
            return True
    return False


def agent_not_runnable(observed: Observed, attempt: Attempt, first: Failure) -> Actions | None:
    """A worker container failed before its agent ever reached the master: the image cannot
    run the agent (see :func:`fall_back`)."""
    return fall_back(observed, attempt, c.REASON_AGENT_NOT_RUNNABLE, f"{pod_of(first)} {first.detail}")


def fall_back(observed: Observed, attempt: Attempt, reason: str, what: str) -> Actions | None:
    """In place cannot run in this job's images: condition InPlaceRestart False (``reason``)
    and, from now on, the job Recreates: this failure too, by the failure policy."""
    why = in_place_refused(reason, observed.now)
    fallback = replace(attempt, conditions=set_condition(attempt.conditions, why), in_place=False)
    decided = failure(observed, fallback)
    note = Actions(
        status={"conditions": fallback.conditions},
        events=[Event("Warning", reason, f"{what}: {why['message']}")],
    )
    return note.then(decided) if decided is not None else note
