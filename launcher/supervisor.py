"""Start a group of workers, stream their output, and stop all of them when one fails.

Note [Worker supervision]
~~~~~~~~~~~~~~~~~~~~~~~~~
* Each worker runs in its own session (``start_new_session``), so the launcher can signal its
  whole process tree (data-loader workers included) with ``killpg``, and a Ctrl-C in the
  terminal reaches only the launcher, which then stops the workers in order.
* Each worker asks the kernel for SIGKILL when the launcher dies (``PR_SET_PDEATHSIG``, set in
  the child between fork and exec). The signal fires when the *thread* that forked the child
  exits, so workers are always started from the main thread. So a SIGKILLed launcher leaves no
  worker behind; the shm manager sees its root (the launcher) die and unlinks the segments.
* Stopping: SIGTERM to every worker's process group, then, after ``grace_s``, SIGKILL to the
  groups still there. A second Ctrl-C skips the grace period.
* The first worker found dead with a non-zero status (or a signal) is the one reported: rank,
  pid, exit code or signal name, and the tail of its traceback, from the last lines of output
  kept in memory (the same bytes as its log file, RUN_DIR/logs/rank_N.log).
* Output: every line goes to the terminal as ``[rank N] line`` and, unchanged, to the rank's log
  file. A carriage return ends a "line" too (progress bars redraw with it); on a terminal those
  redraw in place, elsewhere only completed lines are shown.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 200

try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _libc = None


def _child_setup(parent_pid: int):
    """Runs in the child after fork, before exec: die with the launcher."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:   # the launcher died before prctl took effect
        os._exit(1)


def describe_status(returncode: int) -> str:
    """``-9`` -> "was killed by SIGKILL"; ``3`` -> "exited with code 3"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class Worker:
    """One worker process, its log file and the last lines it printed."""

    def __init__(self, rank: int, argv, env: dict, log_path: str, out, out_lock, header: str):
        self.rank = rank
        self.log_path = log_path
        self.tail = collections.deque(maxlen=_TAIL_LINES)
        self.out, self.out_lock = out, out_lock
        self.prefix = f"[rank {rank}] "
        self.log = open(log_path, "ab")
        self.log.write(header.encode())
        self.log.flush()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=lambda pid=os.getpid(): _child_setup(pid))
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._pump, name=f"zgrad-rank{rank}-out",
                                       daemon=True)
        self.reader.start()

    def _pump(self):
        """Copy the worker's output to its log file and, prefixed, to the terminal."""
        fd = self.proc.stdout.fileno()
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            self.log.write(chunk)
            self.log.flush()
            pending += chunk
            pieces = pending.replace(b"\r\n", b"\n").split(b"\n")
            pending = pieces.pop()
            lines = []
            for piece in pieces:
                *redraws, last = piece.split(b"\r")
                lines.append(last.decode(errors="replace"))
            if b"\r" in pending:        # a progress bar redrawn in place
                redraw = pending.rsplit(b"\r", 1)
                pending = redraw[1]
                if tty and redraw[0].split(b"\r")[-1]:
                    self._write("\r" + self.prefix + redraw[0].split(b"\r")[-1].decode(
                        errors="replace") + "\x1b[K")
            for line in lines:
                self.tail.append(line)
                self._write(("\r\x1b[K" if tty else "") + self.prefix + line + "\n")
        if pending:
            line = pending.split(b"\r")[-1].decode(errors="replace")
            self.tail.append(line)
            self._write(self.prefix + line + "\n")
        self.proc.stdout.close()

    def _write(self, text: str):
        with self.out_lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):
                pass   # the terminal went away; the log file still has everything

    def signal_group(self, sig) -> bool:
        """Send `sig` to the worker's process group; False when nothing is left in it."""
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False

    def close(self, timeout_s: float = 2.0):
        self.reader.join(timeout_s)
        self.log.close()

    def traceback_tail(self, max_lines: int = 20) -> list:
        """The last traceback in the worker's output (from "Traceback" on), else its last lines."""
        lines = list(self.tail)
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("Traceback (most recent call last)"):
                block = lines[i:]
                return block if len(block) <= max_lines else \
                    block[:2] + ["  ..."] + block[-(max_lines - 3):]
        return [ln for ln in lines if ln.strip()][-min(max_lines, 10):]


@dataclasses.dataclass
class Outcome:
    """How one launch of the group ended."""
    status: str                    # "ok", "failed" or "interrupted"
    failed: Worker | None = None   # the first worker that failed
    returncode: int = 0
    signum: int = 0                # the signal that interrupted the launcher


class Supervisor:
    """Runs one group of workers at a time; see Note [Worker supervision]."""

    def __init__(self, log_dir: str, grace_s: float = 5.0, out=None, say=None):
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.out = out or sys.stdout
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.out_lock = threading.Lock()
        self.workers: list = []
        self.interrupted = 0
        self.force = False
        os.makedirs(log_dir, exist_ok=True)

    # -- signals ---------------------------------------------------------------------------
    def install_signals(self):
        """Ctrl-C, SIGTERM, SIGHUP: stop the workers (a second one skips the grace period)."""
        def handler(signum, frame):
            if self.interrupted:
                self.force = True
            self.interrupted = self.interrupted or signum
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)

    # -- one launch ------------------------------------------------------------------------
    def start(self, argv, envs: dict, attempt: int):
        """Start one worker per ``{rank: env}``, from the main thread (see the Note)."""
        assert threading.current_thread() is threading.main_thread()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        header = f"==== zgrad: {'start' if attempt == 0 else f'restart {attempt}'} at {stamp}\n"
        self.workers = []
        for rank, env in envs.items():
            path = os.path.join(self.log_dir, f"rank_{rank}.log")
            self.workers.append(Worker(rank, argv, env, path, self.out, self.out_lock, header))

    def wait(self, poll_s: float = 0.05) -> Outcome:
        """Block until every worker exited 0, one failed, or the launcher was interrupted."""
        while True:
            if self.interrupted:
                return Outcome("interrupted", signum=self.interrupted)
            alive = 0
            for w in self.workers:      # rank order: ties go to the lowest rank
                rc = w.proc.poll()
                if rc is None:
                    alive += 1
                elif rc != 0:
                    return Outcome("failed", w, rc)
            if not alive:
                return Outcome("ok")
            time.sleep(poll_s)

    def stop(self) -> dict:
        """SIGTERM every worker's group, SIGKILL what is left after grace_s. {rank: how}."""
        how = {}
        for w in self.workers:
            if w.proc.poll() is None:
                how[w.rank] = "SIGTERM"
            w.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and not self.force:
            if all(w.proc.poll() is not None and not _group_alive(w.pid) for w in self.workers):
                break
            time.sleep(0.05)
        for w in self.workers:
            if w.proc.poll() is None:
                how[w.rank] = "SIGKILL"
            w.signal_group(signal.SIGKILL)
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
                self.say(f"zgrad run: rank {w.rank} (pid {w.pid}) did not exit after SIGKILL")
            w.close()
        return how

    def report_failure(self, outcome: Outcome, stopped: dict):
        """Say which rank failed, how, and the tail of its traceback."""
        w = outcome.failed
        secs = time.monotonic() - w.started
        lines = [f"zgrad run: rank {w.rank} (pid {w.pid}) {describe_status(outcome.returncode)} "
                 f"after {secs:.1f} s. Last lines of its output ({w.log_path}):"]
        lines += ["    " + ln for ln in w.traceback_tail()] or ["    (no output)"]
        if stopped:
            lines.append("zgrad run: stopped the other workers: " + ", ".join(
                f"rank {r} ({how})" for r, how in sorted(stopped.items())))
        self.say("\n".join(lines))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
