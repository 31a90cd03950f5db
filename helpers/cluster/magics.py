"""``%%px`` for the course, and the recovery protocol: clear messages and a fast way back.

Notebook side only.  Three things a classroom hits all the time:

* a collective that not every rank enters (``if rank == 0: dist.all_reduce(t)``, a
  ``%%px --targets`` slip) or ranks entering different collectives: the ranks
  that wait time out after the process-group timeout; :func:`explain` turns the
  engines' errors into one message naming who waited where and who did not come;
* the notebook's interrupt during a ``%%px`` cell: SIGINT first; a rank stuck in
  a collective does not see it, so its process-group sockets are shut down
  (``helpers.engine.watchdog.abort_collectives``) and the learner is told the group
  did not survive;
* an engine that died: reported by rank before the next ``%%px`` cell runs.

Every message ends with the one call that recovers: ``cluster.recover()``.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import time

from ipyparallel import error as ipp_error
from ipyparallel.client.magics import ParallelMagics

from ..engine.namespace import user_names
from .lifecycle import DEFAULT_START_TIMEOUT, on_this_host
from .planning import EngineInfo

RECOVER = "cluster.recover()"

# what gloo / NCCL say when a collective could not complete
_COLLECTIVE_FAILURE = re.compile(
    r"Timed out waiting|Connection closed by peer|pair closure|Connection reset by peer|"
    r"NCCL|Broken pipe|timed out|Watchdog caught collective operation timeout|"
    r"process group has been destroyed|Socket Timeout",
    re.I,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ARROW = re.compile(r"^-+>\s*(\d+)\s+(.*\S)\s*$")


class CourseError(RuntimeError):
    """An error the course explains itself: shown as its message alone, no traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class CollectiveError(CourseError):
    """A collective could not complete on every rank; the process group is broken."""


class DeadRankError(CourseError):
    """An engine (a rank) has died."""


class ProcessGroupError(CourseError):
    """A cell asked for a process group other than the course's, or has none left."""


_NO_GROUP = "Default process group has not been initialized"


def same_error_everywhere(err: ipp_error.CompositeError, targets: list[int]) -> CourseError | None:
    """One line for an error every targeted rank raised alike, when the course knows it:
    a pasted ``init_process_group`` that does not fit, or a group that is gone."""
    seen = {(ename, _ANSI.sub("", evalue or "").strip()) for ename, evalue, _, _ in err.elist}
    if len(err.elist) != len(targets) or len(seen) != 1:
        return None
    ename, evalue = seen.pop()
    if ename == "ProcessGroupMismatch":
        return ProcessGroupError(f"{evalue} (every rank refused it; no collective ran)")
    if _NO_GROUP in evalue:
        return ProcessGroupError(
            "this cell needs the process group, but it is gone (destroyed by "
            f"torch.distributed's own destroy_process_group?). Run  {RECOVER}  to rebuild it")
    return None


def _user_line(traceback_lines: list[str]) -> str | None:
    """The learner's own line that was running: the first ``----> N code`` in the cell frame."""
    if isinstance(traceback_lines, str):
        traceback_lines = [traceback_lines]
    text = _ANSI.sub("", "\n".join(traceback_lines or []))
    for line in text.splitlines():
        m = _ARROW.match(line.strip())
        if m:
            return f"`{m.group(2)}` (cell line {m.group(1)})"
    return None


def _short(evalue: str) -> str:
    evalue = _ANSI.sub("", evalue).strip().splitlines()[0] if evalue else ""
    evalue = re.sub(r"^\[[^\]]*\]\s*", "", evalue)  # gloo's [file.cc:553] prefix
    return evalue[:110]


def explain(err: ipp_error.CompositeError, rank_of: dict[int, int], targets: list[int],
            timeout: float) -> CollectiveError | None:
    """A CollectiveError describing a failed collective, or None if that is not what failed."""
    failed = {}
    for ename, evalue, etb, einfo in err.elist:
        eid = (einfo or {}).get("engine_id")
        if eid is None or not _COLLECTIVE_FAILURE.search(f"{ename} {evalue}"):
            return None  # an ordinary error in the learner's code: show it as it is
        failed[eid] = (ename, evalue, etb)
    if not failed:
        return None
    lines = [f"A collective did not complete on every rank (process-group timeout {timeout:g} s):"]
    for eid in sorted(targets, key=lambda e: rank_of.get(e, e)):
        r = rank_of.get(eid, f"engine {eid}")
        if eid in failed:
            ename, evalue, etb = failed[eid]
            where = _user_line(etb) or "a collective"
            lines.append(f"  rank {r}: waited in {where} and failed: {_short(evalue)}")
        else:
            lines.append(f"  rank {r}: finished the cell without entering that collective")
    absent = [r for e, r in sorted(rank_of.items(), key=lambda x: x[1]) if e not in targets]
    if absent:
        lines.append(f"  rank(s) {', '.join(map(str, absent))}: not targeted by this cell "
                     "(every rank of the group must run the collective)")
    if any("pair closure" in v or "destroyed" in v for _, v, _ in failed.values()):
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
        self.tpc.check_alive()
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
            raise self._translate(e) from None
        finally:
            if result.ready():
                result.wait_for_output(1)
                if _has_output(result):  # else display_outputs would only parse dates
                    result.display_outputs(groupby)
        if self.shell.execution_count not in self.tpc._px_cells:
            self.tpc._px_cells.append(self.shell.execution_count)
        return None

    def _translate(self, e):
        targets = self._targets()
        rank_of = {eng.engine_id: eng.rank for eng in self.tpc.engines}
        return (same_error_everywhere(e, targets)
                or explain(e, rank_of, targets, self.tpc.timeout) or e)

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
        try:
            tpc.client.send_signal(signal.SIGINT, targets=targets, block=True)
        except Exception:
            pass
        if result is None or result.wait(self.interrupt_grace):
            msg = ("Interrupted: every engine stopped on SIGINT. The process group survived "
                   "(no rank was inside a collective).")
        else:
            stuck = tpc.busy_ranks()
            tpc.abort_collectives()
            done = result.wait(max(0.1, 2.0 - (time.monotonic() - t0)))
            stuck_txt = ", ".join(map(str, stuck)) or "some"
            msg = (f"Interrupted: rank(s) {stuck_txt} were blocked inside a collective, which "
                   "SIGINT cannot stop, so their process-group connections were closed"
                   + ("" if done else " (some rank still has not stopped: "
                      "./launch_cluster.sh status)") +
                   f". The process group did NOT survive. Recover with:  {RECOVER}"
                   "   (your engine variables are kept)")
        print(f"{msg}  [{time.monotonic() - t0:.1f} s]", file=sys.stderr)


# --------------------------------------------------------------------------- recovery
def dead_ranks(tpc) -> list[EngineInfo]:
    """Engines of this cluster that are no longer registered (died, were killed)."""
    alive = set(tpc.client.ids)
    return [e for e in tpc.engines if e.engine_id not in alive]


def check_alive(tpc) -> None:
    """Raise DeadRankError naming the dead ranks (called before every %%px cell)."""
    dead = dead_ranks(tpc)
    if dead:
        who = "; ".join(f"rank {e.rank} (engine {e.engine_id}, pid {e.pid} on {e.host})"
                        for e in dead)
        raise DeadRankError(
            f"{who} died (killed, out of memory, or crashed). Bring the cluster back to "
            f"{tpc.world_size} ranks with:  {RECOVER}   (engine variables are lost; "
            "it tells you which cells to re-run)"
        )

def busy_ranks(tpc) -> list[int]:
    """Ranks whose engine is still running a task."""
    try:
        status = tpc.client.queue_status(targets=tpc.engine_ids, verbose=False)
    except Exception:
        return []
    return [e.rank for e in tpc.engines
            if isinstance(status.get(e.engine_id), dict) and status[e.engine_id].get("tasks", 0) +
            status[e.engine_id].get("queue", 0) > 0]

def abort_collectives(tpc, timeout: float = 2.0) -> dict[int, int]:
    """Shut down every rank's process-group sockets: blocked collectives fail at once."""
    closed = {}
    for rank, (addr, port) in tpc._watchdogs.items():
        try:
            with socket.create_connection((addr, port), timeout=timeout) as s:
                s.sendall(f"{tpc._token} abort\n".encode())
                closed[rank] = int(s.recv(64).decode().strip() or 0)
        except (OSError, ValueError):
            closed[rank] = -1
    return closed

def recover(tpc, timeout: float = DEFAULT_START_TIMEOUT) -> str:
    """Get back to a working cluster, never touching this notebook's own variables.

    * every engine alive (after a timeout or an interrupted collective): abort
      what is still blocked, then rebuild only the process group on a fresh
      port; every engine variable is kept;
    * an engine died: restart all N engines (ranks 0..N-1, new engine ids) and
      rebuild the process group; says which engine variables were lost and which
      ``%%px`` cells to re-run.
    Returns (and prints) what it did.
    """
    t0 = time.monotonic()
    dead = dead_ranks(tpc)
    if not dead:
        if busy_ranks(tpc):
            abort_collectives(tpc)
            deadline = time.monotonic() + 5
            while busy_ranks(tpc) and time.monotonic() < deadline:
                time.sleep(0.05)
        tpc.init_distributed(force=True)
        msg = (f"Process group rebuilt on all {tpc.world_size} ranks in "
               f"{time.monotonic() - t0:.1f} s; every engine variable was kept.")
    else:
        survivors = [e for e in tpc.engines if e not in dead]
        lost = []
        if survivors:
            try:
                lost = tpc.client[survivors[0].engine_id].apply_sync(user_names)
            except Exception:
                lost = []
        cells = list(tpc._px_cells)
        if tpc.cluster is None and not on_this_host(tpc.ref):
            raise DeadRankError(
                "an engine of a cluster on another node died; restart it there: "
                "./launch_cluster.sh stop && ./launch_cluster.sh start --pbs ..."
            )
        tpc.restart_engines(timeout=timeout)
        tpc._px_cells.clear()
        ranks = ", ".join(str(e.rank) for e in dead)
        msg = (f"Rank(s) {ranks} had died: all {tpc.world_size} engines were restarted "
               f"(ranks 0..{tpc.world_size - 1}, engine ids {tpc.engine_ids}) with a new "
               f"process group in {time.monotonic() - t0:.1f} s.\n"
               f"Lost on the engines: {', '.join(lost) if lost else 'their variables'}.\n"
               + (f"Rebuild them by re-running the %%px cells In[{'], In['.join(map(str, cells))}] "
                  "in that order." if cells else
                  "Rebuild them by re-running the %%px cells after connect()."))
    tpc.activate()
    print(msg)
    return msg

def install_magics(tpc) -> None:
    """Register ``%%px`` (with fault handling) for this cluster in the running IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipyparallel needs IPython
        return
    shell = get_ipython()
    if shell is None:
        return
    shell.magics_manager.register(TPParallelMagics(shell, tpc.view, tpc))
