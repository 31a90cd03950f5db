"""``%%px`` for the course: clear messages, and the interrupt (notebook side only).

A collective that not every rank entered gets one message naming who waited where
(:func:`explain`); the interrupt also stops a rank stuck in a collective (README.md says why
SIGINT alone cannot); a dead engine is named before the next cell runs.  Every message ends with
the one call that recovers: ``cluster.recover()`` (:class:`~helpers.cluster.recovery.Recovery`).
"""

from __future__ import annotations

import re
import signal
import sys
import time
from contextlib import suppress

from ipyparallel import error as ipp_error
from ipyparallel.client.magics import ParallelMagics

from .recovery import RECOVER, CourseError

# what gloo / NCCL say when a collective could not complete
_COLLECTIVE_FAILURE = re.compile(
    r"Timed out waiting|Connection closed by peer|pair closure|Connection reset by peer|"
    r"NCCL|Broken pipe|timed out|Watchdog caught collective operation timeout|"
    r"process group has been destroyed|Socket Timeout",
    re.I,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ARROW = re.compile(r"^[ \t]*-+>[ \t]*(\d+)[ \t]+(.*\S)", re.M)  # a traceback's "----> N code" line


class CollectiveError(CourseError):
    """A collective could not complete on every rank; the process group is broken."""


class ProcessGroupError(CourseError):
    """A cell asked for a process group other than the course's, or has none left."""


def same_error_everywhere(err: ipp_error.CompositeError, targets: list[int]) -> CourseError | None:
    """One line for an error every targeted rank raised alike, when the course knows it:
    a pasted ``init_process_group`` that does not fit, or a group that is gone."""
    seen = {(ename, _ANSI.sub("", evalue or "").strip()) for ename, evalue, _, _ in err.elist}
    if len(err.elist) != len(targets) or len(seen) != 1:
        return None
    ename, evalue = seen.pop()
    if ename == "ProcessGroupMismatch":
        return ProcessGroupError(f"{evalue} (every rank refused it; no collective ran)")
    if "Default process group has not been initialized" in evalue:
        return ProcessGroupError(
            "this cell needs the process group, but it is gone (destroyed by "
            f"torch.distributed's own destroy_process_group?). Run  {RECOVER}  to rebuild it")
    return None


def _user_line(traceback: str | None) -> str | None:
    """The learner's own line that was running: the first ``----> N code`` in the cell frame
    (``traceback``: a RemoteError's, its lines joined)."""
    m = _ARROW.search(_ANSI.sub("", traceback or ""))
    return f"`{m.group(2)}` (cell line {m.group(1)})" if m else None


def _short(evalue: str) -> str:
    evalue = _ANSI.sub("", evalue).strip().splitlines()[0] if evalue else ""
    evalue = re.sub(r"^\[[^\]]*\]\s*", "", evalue)  # gloo's [file.cc:553] prefix
    return evalue[:110]


def explain(err: ipp_error.CompositeError, rank_of: dict[int, int], targets: list[int],
            timeout: float) -> CollectiveError | None:
    """A CollectiveError describing a failed collective, or None if that is not what failed."""
    failed = {}  # engine id -> what its rank did; never empty (a CompositeError holds >= 1 error)
    for ename, evalue, etb, einfo in err.elist:
        eid = (einfo or {}).get("engine_id")
        if eid is None or not _COLLECTIVE_FAILURE.search(f"{ename} {evalue}"):
            return None  # an ordinary error in the learner's code: show it as it is
        failed[eid] = f"waited in {_user_line(etb) or 'a collective'} and failed: {_short(evalue)}"
    lines = [f"A collective did not complete on every rank (process-group timeout {timeout:g} s):"]
    for eid in sorted(targets, key=lambda e: rank_of.get(e, e)):
        r = rank_of.get(eid, f"engine {eid}")
        lines.append(f"  rank {r}: {failed.get(eid, 'finished the cell without entering that collective')}")
    absent = sorted(r for e, r in rank_of.items() if e not in targets)
    if absent:
        lines.append(f"  rank(s) {', '.join(map(str, absent))}: not targeted by this cell "
                     "(every rank of the group must run the collective)")
    if any("pair closure" in evalue or "destroyed" in evalue for _, evalue, _, _ in err.elist):
        lines.append("The process group was already broken by an earlier failure.")
    lines.append(f"The process group is broken on every rank. Recover with:  {RECOVER}"
                 "   (your engine variables are kept)")
    return CollectiveError("\n".join(lines))


def _has_output(result) -> bool:
    """Does any engine have something for ``display_outputs`` to show?

    ``display_outputs`` first parses four timestamps per engine with dateutil
    (~1 ms for 4 engines on a laptop), most of what a quiet ``%%px`` cell costs
    over ``view.execute``.
    """
    return any(
        md.get("stdout") or md.get("stderr") or md.get("outputs")
        or md.get("execute_result") is not None
        for md in result._metadata
    )


class TPParallelMagics(ParallelMagics):
    """``%%px`` / ``%px`` with the course's fault handling around ipyparallel's own."""

    # Output is collected, then shown once: a failed collective gets one summary,
    # not N engine tracebacks streamed before it.
    interrupt_grace = 0.7  # seconds SIGINT gets before collectives are aborted

    def __init__(self, shell, view, tpc):
        self.tpc = tpc
        super().__init__(shell, view)

    def parallel_execute(self, cell, block=None, groupby="type", save_name=None, **kwargs):
        self.tpc.check_driver()  # another notebook took the cluster over: nothing is sent
        self.tpc.recovery.check_alive()
        self.tpc.follow_cwd()  # a %cd in the notebook moves the engines too
        block = self.view.block if block is None else block
        # submit without blocking: the waiting, the interrupt and the errors are ours
        result = super().parallel_execute(cell, block=False, groupby=groupby,
                                          save_name=save_name, stream_output=False)
        if not block:
            return result
        try:
            while not result.wait(0.1):
                pass
            result.get()
        except KeyboardInterrupt:
            self._interrupt(result)
            return None
        except ipp_error.CompositeError as e:
            self.tpc.check_driver()  # interrupted by another notebook taking the cluster over
            targets = self._targets()
            rank_of = {eng.engine_id: eng.rank for eng in self.tpc.engines}
            raise (same_error_everywhere(e, targets)
                   or explain(e, rank_of, targets, self.tpc.timeout) or e) from None
        finally:
            if result.ready():
                result.wait_for_output(1)
                if _has_output(result):  # else display_outputs would only parse dates
                    result.display_outputs(groupby)
        self.tpc.recovery.note_px_cell(self.shell.execution_count)
        return None

    def _targets(self) -> list[int]:
        t = self.view.targets
        if t is None or t == "all":
            return list(self.tpc.engine_ids)
        return [t] if isinstance(t, int) else list(t)

    def _interrupt(self, result) -> None:
        """Stop every targeted engine within about 2 s; say whether the group survived."""
        tpc = self.tpc
        targets = self._targets()
        t0 = time.monotonic()
        with suppress(Exception):
            tpc.client.send_signal(signal.SIGINT, targets=targets, block=True)
        if result.wait(self.interrupt_grace):
            msg = ("Interrupted: every engine stopped on SIGINT. The process group survived "
                   "(no rank was inside a collective).")
        else:
            stuck = tpc.recovery.busy_ranks()
            tpc.recovery.abort_collectives()
            done = result.wait(max(0.1, 2.0 - (time.monotonic() - t0)))
            stuck_txt = ", ".join(map(str, stuck)) or "some"
            msg = (f"Interrupted: rank(s) {stuck_txt} were blocked inside a collective, which "
                   "SIGINT cannot stop, so their process-group connections were closed"
                   + ("" if done else " (some rank still has not stopped: "
                      "./launch_cluster.sh status)") +
                   f". The process group did NOT survive. Recover with:  {RECOVER}"
                   "   (your engine variables are kept)")
        print(f"{msg}  [{time.monotonic() - t0:.1f} s]", file=sys.stderr)
