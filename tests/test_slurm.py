"""SLURM: `atss train` under srun finds its place from SLURM's environment, and the sbatch
template runs as written, against a real one-node SLURM cluster started here.

The cluster: Debian's slurm-wlm and munge (installed with apt-get when missing; skipped with the
reason when that is impossible or we are not root), a slurm.conf in a temporary folder, munged,
slurmctld and slurmd started in the foreground by the fixture and killed at its end. The tests
on it are marked `system`: they run under CI=true or ATSS_SYSTEM_TESTS=1 only (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from locks import exclusive
from multinode_util import ROOT, assert_same_losses, common, env, free_port, losses, run, train_records, wait_for

from atss_cli.launch import slurm

# --- where a task stands: SLURM's variables, no cluster needed -------------------------------


def test_one_task_per_process_takes_rank_world_and_master_from_slurm():
    place = slurm.place({"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "2",
                         "SLURM_NODEID": "1", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)",
                         "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"})
    assert place.per_task and (place.rank, place.world_tasks, place.local_rank, place.local_tasks) == (5, 8, 1, 4)
    assert (place.nnodes, place.node_rank) == (2, 1)
    assert place.master_addr == "gpu07" and place.master_port == slurm.port_for_job("123456") == 23456


def test_one_task_per_node_is_a_node_of_a_torchrun_launch():
    place = slurm.place({"SLURM_PROCID": "1", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
                         "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "a01,b02", "SLURM_JOB_ID": "7"})
    assert not place.per_task and (place.nnodes, place.node_rank, place.master_addr) == (2, 1, "a01")


def test_the_batch_script_itself_is_not_a_srun_task():
    # sbatch sets SLURM_PROCID and SLURM_JOB_ID for the batch shell too, but no step id.
    assert slurm.place({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_JOB_ID": "9"}) is None


@pytest.mark.parametrize("nodelist,first", [("n1", "n1"), ("gpu[03-05,9],cpu1", "gpu03"), ("x[10,2]", "x10"),
                                            ("a-b[001-004]", "a-b001")])
def test_the_first_host_of_a_node_list(nodelist, first):
    assert slurm.parse_first_host(nodelist) == first


def test_print_sbatch_writes_a_requeueable_script_for_this_command(tmp_path):
    proc = run("train", "--coco", tmp_path, "--work-dir", "runs/r50", "--print-sbatch", "--nnodes", 2,
               "--gpus", 4, "--time", "12:00:00", "--amp", "bf16", "--master-port", 1234)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=12:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
        assert line in script.splitlines(), (line, script)
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun == [f"srun atss train --coco {tmp_path} --work-dir runs/r50 --amp bf16 &"], srun
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


# --- a real one-node cluster -------------------------------------------------------------------


def _install() -> str:
    """'' when slurm-wlm and munge are there (installing them if needed), else why not."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "srun", "sbatch", "munged")):
        return ""
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if shutil.which("apt-get") is None:
        return "slurm-wlm/munge are not installed and there is no apt-get"
    try:
        with exclusive("apt-get"):  # dpkg takes one installer at a time (another test's may run beside)
            got = subprocess.run(["apt-get", "install", "-y", "slurm-wlm", "munge"], capture_output=True,
                                 text=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        return "apt-get install slurm-wlm munge took over 10 minutes"
    if got.returncode != 0:
        return "apt-get install slurm-wlm munge failed: " + (got.stderr.strip().splitlines() or ["?"])[-1]
    return ""


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = {**env(), "SLURM_CONF": str(root / "slurm.conf"),
                    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}

    def start(self) -> None:
        root, host = self.root, socket.gethostname()
        (root / "munge").mkdir(mode=0o700)
        for sub in ("state", "spool"):
            (root / sub).mkdir()
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = root / "munge" / "sock"
        self._daemon(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                      f"--log-file={root / 'munge' / 'log'}", f"--pid-file={root / 'munge' / 'pid'}",
                      f"--seed-file={root / 'munge' / 'seed'}"])
        self._wait(lambda: sock.exists(), 30, "munged")
        ctld_port, d_port = free_port(), free_port()
        (root / "slurm.conf").write_text(f"""ClusterName=atsstest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        self._daemon(["slurmctld", "-D", "-i"])
        self._daemon(["slurmd", "-D"])
        self._wait(lambda: self.cmd("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60, "an idle SLURM node")

    def _daemon(self, argv: list[str]) -> None:
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited while waiting for {what}")
            time.sleep(0.2)
        raise RuntimeError(f"no {what} within {timeout:g} s")

    def cmd(self, *argv, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              **kwargs)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, munged (and all they started)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, 9)
                    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _install()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            c.start()
        except RuntimeError as exc:
            logs = "".join((c.root / n).read_text()[-2000:] for n in ("slurmctld.log", "slurmd.log")
                           if (c.root / n).exists())
            pytest.skip(f"a one-node SLURM cluster does not start here: {exc}\n{logs}")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def coco(small_coco):
    return small_coco


@pytest.fixture(scope="module")
def two_processes(two_process_reference):
    """Two gloo processes, 1 epoch: the first epoch of the session's 2-epoch reference run."""
    return losses(two_process_reference, epochs=1)


@pytest.mark.system
def test_srun_two_tasks_train_as_two_processes(cluster, coco, two_processes, tmp_path):
    work = tmp_path / "srun"
    proc = cluster.cmd("srun", "-N1", "-n2", sys.executable, "-m", "atss_cli", "train", *common(coco, 1),
                       "--work-dir", str(work), "--batch-per-gpu", "1", timeout=600)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "2 process(es) x 1 images" in proc.stdout  # one rank reports, and it saw a world of 2
    assert_same_losses(two_processes, losses(work))


def write_sbatch_script(coco, epochs: int, work, path):
    """`atss train --print-sbatch` for two processes on one node, written to `path`. This cluster
    has no GPUs and few cores: those two lines go, the rest runs as printed."""
    made = run("train", *common(coco, epochs), "--work-dir", work, "--batch-per-gpu", 1, "--print-sbatch",
               "--nnodes", 1, "--gpus", 2, "--time", "00:30:00")
    assert made.returncode == 0, made.stderr
    path.write_text("".join(line + "\n" for line in made.stdout.splitlines()
                            if not line.startswith(("#SBATCH --gpus-per-node", "#SBATCH --cpus-per-task"))))
    return path


@pytest.mark.system
def test_the_printed_sbatch_script_runs_under_sbatch(cluster, coco, two_processes, tmp_path):
    work = tmp_path / "sbatch"
    path = write_sbatch_script(coco, 1, work, tmp_path / "job.sh")
    proc = cluster.cmd("sbatch", "--wait", "--chdir", str(tmp_path), str(path), timeout=600)
    out = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    print(proc.stdout, proc.stderr, out[-3000:])
    assert proc.returncode == 0, proc.stderr + out
    assert_same_losses(two_processes, losses(work))


@pytest.fixture(scope="module")
def two_epochs(two_process_reference):
    return losses(two_process_reference)


def _job_field(cluster, job: str, field: str) -> str:
    out = cluster.cmd("scontrol", "show", "job", job).stdout
    for word in out.split():
        if word.startswith(field + "="):
            return word.split("=", 1)[1]
    return ""


@pytest.mark.system
def test_usr1_before_the_time_limit_saves_requeues_and_the_job_resumes(cluster, coco, two_epochs, tmp_path):
    """The printed script under sbatch; USR1 to its batch shell (as --signal=B:USR1@120 sends it):
    the tasks agree on an iteration, save, rank 0 requeues the job, and the requeued job resumes
    and ends with the losses of an uninterrupted run."""
    work = tmp_path / "requeue"
    write_sbatch_script(coco, 2, work, tmp_path / "job.sh")
    submitted = cluster.cmd("sbatch", "--parsable", "--chdir", str(tmp_path), str(tmp_path / "job.sh"))
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (work / "metrics.jsonl").exists() or \
                sum('"train"' in line for line in (work / "metrics.jsonl").read_text().splitlines()) < 2:
            assert time.monotonic() < deadline, "no two iterations within 300 s"
            time.sleep(0.2)
        sent = cluster.cmd("scancel", "--signal=USR1", "--batch", job)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 420
        seen = []
        released = False
        while _job_field(cluster, job, "JobState") != "COMPLETED" or _job_field(cluster, job, "Restarts") != "1":
            assert time.monotonic() < deadline, (seen, cluster.cmd("scontrol", "show", "job", job).stdout)
            state = (_job_field(cluster, job, "JobState"), _job_field(cluster, job, "Reason"))
            if not seen or seen[-1] != state:
                seen.append(state)
            assert state[0] not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"), \
                (seen, "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))[-3000:])
            if state == ("PENDING", "BeginTime") and not released:
                # SLURM holds a requeued job 120 s. Not "now": a start in the second of the requeue
                # is refused ("Job credential revoked": the old instance's credential, revoked in
                # that second, still matches) and the job fails.
                cluster.cmd("scontrol", "update", f"jobid={job}", "StartTime=now+3")
                released = True
            time.sleep(0.5)
        print("job states:", seen)
    finally:
        cluster.cmd("scancel", job)
    out = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    print(out[-4000:])
    assert "requeue" in out.lower() and "resumed from" in out, out
    assert_same_losses(two_epochs, losses(work))


def _task_pid(marker: str, procid: int) -> int | None:
    """The srun task running our command (its command line has `marker`) with that SLURM_PROCID."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker.encode() not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
            if f"SLURM_PROCID={procid}".encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                return int(entry)
        except OSError:
            continue
    return None


@pytest.mark.system
def test_a_killed_srun_task_stops_the_other_and_the_same_srun_resumes(cluster, coco, two_epochs, tmp_path):
    work = tmp_path / "killed"
    argv = ["srun", "-N1", "-n2", sys.executable, "-m", "atss_cli", "train", *common(coco, 2), "--work-dir", str(work),
            "--batch-per-gpu", "1", "--dist-timeout", "10", "--set", "save_every_iters=1"]
    step = subprocess.Popen(argv, env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: train_records(work) >= 2 and _task_pid(str(work), 1), 240, "two iterations", [step])
        os.kill(_task_pid(str(work), 1), 9)
        killed = time.monotonic()
        _, err = step.communicate(timeout=120)
        stopped = time.monotonic() - killed
    finally:
        if step.poll() is None:
            os.killpg(step.pid, 9)
            step.communicate(timeout=30)
    print(f"\nsrun returned {stopped:.1f} s after task 1 was killed:\n{err[-2000:]}")
    assert step.returncode != 0
    assert "Traceback" not in err
    assert any(line.startswith("error: [rank 0] lost contact with another rank") for line in err.splitlines()), err
    assert "task 1: Killed" in err, err  # srun's own summary names the lost task

    again = cluster.cmd(*argv, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    assert_same_losses(two_epochs, losses(work))
