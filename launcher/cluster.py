"""Where this launcher's workers sit in the job: standalone, multi-node by flags, or placed by a
scheduler (SLURM's srun, Open MPI's or MPICH's mpirun).

When a scheduler started this process as one task of many, it already decided every rank: the
launcher then runs exactly one worker with the scheduler's rank instead of spawning
``nproc_per_node`` of them (``srun -n 8 zgrad run cfg.yaml`` and ``mpirun -np 8 zgrad run
cfg.yaml`` work without flags).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess


class PlacementError(ValueError):
    """The flags and the environment do not describe a job the launcher can start."""


@dataclasses.dataclass
class Placement:
    """The job's shape and the ranks this launcher starts."""
    world_size: int
    nnodes: int
    node_rank: int
    local_world_size: int
    ranks: list            # global ranks started here
    local_ranks: list      # their local ranks, same order
    master_addr: str
    master_port: int       # 0: pick a free one (standalone only)
    scheduler: str | None = None    # "slurm", "openmpi", "mpich" or None
    job_key: str = ""      # the same string on every launcher of one job (scheduler job id)

    @property
    def multi_launcher(self) -> bool:
        """More than one launcher serves this job (other nodes, or one per scheduler task)."""
        return self.nnodes > 1 or self.scheduler is not None


def expand_nodelist(nodelist: str) -> list:
    """SLURM's compressed host list -> hostnames: ``"node[01-03,07],gpu1"`` -> node01, ...

    Uses ``scontrol show hostnames`` where present (it knows every corner of the syntax).
    """
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = []
    # split on commas outside brackets
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not m:
            hosts.append(item)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return hosts


def _tasks_per_node(spec: str) -> list:
    """SLURM_TASKS_PER_NODE ``"2(x3),1"`` -> [2, 2, 2, 1]."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise PlacementError(f"zgrad run: cannot read SLURM_TASKS_PER_NODE={spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _int(env, name):
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise PlacementError(f"zgrad run: expected an integer in ${name}, got "
                             f"{env.get(name)!r}") from None


def _port(env, flag_port, job_key: str) -> int:
    """The rendezvous port every task agrees on: flag, $MASTER_PORT, or one derived from the job."""
    if flag_port:
        return flag_port
    if env.get("MASTER_PORT"):
        return _int(env, "MASTER_PORT")
    if job_key:
        digits = re.sub(r"\D", "", job_key)
        return 15000 + (int(digits[-8:] or 0) % 20000)
    raise PlacementError("zgrad run: the scheduler started several tasks but nothing names "
                         "the rendezvous port; export MASTER_PORT=<port> (the same for every "
                         "task) or pass --master-port.")


def from_scheduler(env, master_addr=None, master_port=0):
    """The Placement a scheduler gave this process, or None when no scheduler placed it.

    A scheduler "placed" us when it started several tasks (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE
    or PMI_SIZE > 1). Run `zgrad run` through srun/mpirun, not bare in a multi-task sbatch
    script (there it would be task 0 of N alone); ``--no-scheduler`` ignores these variables.
    """
    # one task (salloc, `srun -n1 zgrad run --nproc-per-node 4`): nothing placed, we spawn
    if "SLURM_PROCID" in env and env.get("SLURM_NTASKS", "1") != "1":
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = int(env.get("SLURM_LOCALID", 0))
        node = int(env.get("SLURM_NODEID", 0))
        spec = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or str(world)
        per_node = _tasks_per_node(spec)
        hosts = expand_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
        nnodes = int(env.get("SLURM_NNODES") or len(hosts) or len(per_node))
        job_key = f"slurm{env.get('SLURM_JOB_ID', '0')}s{env.get('SLURM_STEP_ID', '0')}"
        addr = master_addr or env.get("MASTER_ADDR") or \
            ("127.0.0.1" if nnodes == 1 or not hosts else hosts[0])
        return Placement(world, nnodes, node, per_node[min(node, len(per_node) - 1)], [rank],
                         [local], addr, _port(env, master_port, job_key), "slurm", job_key)
    for sched, names in (("openmpi", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")),
                         ("mpich", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
                                    "MPI_LOCALNRANKS"))):
        if names[0] not in env or env.get(names[1], "1") == "1":
            continue
        rank, world = _int(env, names[0]), _int(env, names[1])
        local = int(env.get(names[2], rank))
        local_size = int(env.get(names[3], world))
        nnodes = max(1, -(-world // max(local_size, 1)))
        job_key = env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid") or \
            env.get("PMI_KVSNAME") or ""
        addr = master_addr or env.get("MASTER_ADDR")
        if not addr:
            if nnodes > 1:
                raise PlacementError(f"zgrad run: {sched} placed {world} tasks on several nodes "
                                     "but nothing names the master; export MASTER_ADDR=<host "
                                     "of rank 0> (and MASTER_PORT) or pass --master-addr.")
            addr = "127.0.0.1"
        return Placement(world, nnodes, rank // max(local_size, 1), local_size, [rank], [local],
                         addr, _port(env, master_port, job_key), sched, job_key)
    return None


def from_flags(nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str,
               master_port: int) -> Placement:
    """The Placement ``--nproc-per-node/--nnodes/--node-rank`` describe (torchrun's static mode)."""
    if nnodes > 1 and not master_port:
        raise PlacementError(f"zgrad run: --nnodes {nnodes} needs --master-port P (the same on "
                             "every node; node 0 hosts the rendezvous store there).")
    if not 0 <= node_rank < nnodes:
        raise PlacementError(f"zgrad run: expected 0 <= --node-rank < --nnodes ({nnodes}), got "
                             f"{node_rank}")
    first = node_rank * nproc_per_node
    return Placement(nproc_per_node * nnodes, nnodes, node_rank, nproc_per_node,
                     list(range(first, first + nproc_per_node)), list(range(nproc_per_node)),
                     master_addr, master_port)


def gpu_count(env=None) -> int:
    """NVIDIA GPUs this process may use, without importing CuPy (no CUDA context here)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        present = _nvidia_smi_count()
    if visible is None:
        return present
    ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return min(len(ids), present) if present else 0


def _nvidia_smi_count() -> int:
    """GPUs listed by ``nvidia-smi -L`` (containers may lack /proc/driver/nvidia/gpus)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
