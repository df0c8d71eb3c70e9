"""``python -m shm list | sweep``: inspect and remove zgrad segments in /dev/shm.

  python -m shm list               segments per job, their size, and whether the job's manager runs
  python -m shm sweep JOB [JOB..]  remove every segment of these jobs
  python -m shm sweep --stale      remove the segments of every job whose manager is gone
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from . import segment as _seg


def _jobs() -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    try:
        names = os.listdir(_seg.SHM_DIR)
    except FileNotFoundError:
        return jobs
    for n in names:
        parts = n.split("_")
        if n.startswith("zgrad_") and len(parts) >= 3:
            jobs.setdefault(parts[1], []).append(n)
    return jobs


def manager_alive(job: str) -> bool:
    """True if job `job` has a manager answering on its socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(_seg.manager_address(job))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="segments per job")
    sw = sub.add_parser("sweep", help="remove a job's segments")
    sw.add_argument("jobs", nargs="*", help="job ids (ZGRAD_JOB_ID)")
    sw.add_argument("--stale", action="store_true", help="every job whose manager is gone")
    sw.add_argument("--dry-run", action="store_true", help="print, remove nothing")
    args = ap.parse_args(argv)
    jobs = _jobs()
    if args.cmd == "list":
        for job, names in sorted(jobs.items()):
            size = sum(os.stat(os.path.join(_seg.SHM_DIR, n)).st_size for n in names
                       if os.path.exists(os.path.join(_seg.SHM_DIR, n)))
            state = "manager running" if manager_alive(job) else "no manager (stale)"
            print(f"{job}\t{len(names)} segments\t{_seg._fmt_bytes(size)}\t{state}")
        return 0
    if not args.jobs and not args.stale:
        ap.error("sweep: name job ids or pass --stale")
    targets = list(args.jobs)
    if args.stale:
        targets += [j for j in jobs if not manager_alive(j)]
    total = 0
    for job in targets:
        if args.dry_run:
            names = jobs.get(job, [])
        else:
            names = _seg.sweep(job)
        total += len(names)
        for n in names:
            print(("would remove " if args.dry_run else "removed ") + n)
    print(f"{total} segments {'to remove' if args.dry_run else 'removed'} "
          f"from {len(targets)} jobs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
