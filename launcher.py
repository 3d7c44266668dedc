"""Several trials of one sweep at once on this machine: `--workers=N`.

The process that runs the sweep (tune.py, through train.bash) stays the
chief of keras-tuner's chief/worker mode: it holds the sweep folder
(sweep.lock), plans the grid, serves its oracle over gRPC on 127.0.0.1
only (a port the system picks, so no other sweep collides with it), and
starts N worker processes: `tune.py` again with the same settings and
KERASTUNER_TUNER_ID=worker<k>.  Each worker asks the oracle for the next
configuration of the grid and runs it exactly as a serial sweep would, in
the same sweep folder: same trial names, resume and results.

Resources: with GPUs, worker k sees one of them (CUDA_VISIBLE_DEVICES,
round robin: more workers than GPUs share them).  On CPU the cores are
split between the workers' inter-op thread pools (TF_NUM_INTEROP_THREADS)
and their tf.data and OpenMP threads; the intra-op pools keep one thread
per core, as in a serial sweep, because XLA's convolution gradients sum in
an order that depends on the intra-op thread count (measured: 1 and 2
threads give different bits), and a trial's numbers must not depend on how
many workers ran the sweep.

Start-up: the workers are started before the chief imports TensorFlow
(`prestart`), so that the three processes import it at once rather than
one after the other; each worker, once TensorFlow is loaded, waits for the
oracle's port (a file the chief writes when it serves) and only then
reads the sweep folder.

Faults: a worker that crashes (killed, or a crash of Python) is started
again under the same id; the oracle hands it back its trial, which resumes
from its last finished epoch.  Ctrl-C or SIGTERM stops every worker and
the sweep (exit 130 or 143; rerun the command to continue).  Workers die
with the chief (PR_SET_PDEATHSIG), so a SIGKILL of the chief alone leaves
no worker behind, and a SIGKILL of the whole process group resumes on
rerun like a serial sweep.  A worker that stops on bad input (2) or a
failed write (4) stops the sweep with its status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from runtime.errors import Interrupted, UsageError, WorkerStopped

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCHER_ENV = "BPFREE_LAUNCHER_PID"  # set in the workers it starts
QUIET_ENV = "BPFREE_WORKER_QUIET"  # workers print no per-trial lines
WORKERS_ENV = "BPFREE_SWEEP_WORKERS"  # how many (for progress estimates)
PORT_FILE_ENV = "BPFREE_ORACLE_PORT_FILE"  # where a worker reads the port
NOT_RETRIED = {2: "bad input", 3: "a failed run", 4: "a failed write"}
POLL_SECONDS = 0.2
PORT_POLL_SECONDS = 0.05
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # one entry per GPU
STOP_SECONDS = 10  # how long a worker gets to end after SIGTERM


def parse_workers(text) -> int:
    """`--workers`' value: a whole number ≥ 1 (1: a serial sweep)."""
    if text is None:
        return 1
    try:
        workers = int(str(text).strip())
    except ValueError:
        workers = 0
    if workers < 1:
        raise UsageError(f"--workers={text}: must be a whole number of at "
                         "least 1 (the trials run at once; 1: one after "
                         "another)")
    return workers


# --- What each worker gets --------------------------------------------------


def gpu_ids() -> list[str]:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES' ids, else every
    GPU of NVIDIA's driver); empty without a GPU.  Read without
    TensorFlow, which loads only after the workers start."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",")
                if g.strip() and g.strip() != "-1"]
    try:
        count = len(os.listdir(NVIDIA_GPUS))
    except OSError:  # (no NVIDIA driver: no GPU TensorFlow could use)
        count = 0
    return [str(k) for k in range(count)]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def worker_environment(k: int, workers: int, gpus: list[str],
                       cores: int) -> dict:
    """The settings worker k of `workers` runs with."""
    share = str(max(1, cores // workers))
    env = {"KERASTUNER_TUNER_ID": f"worker{k}",
           "TF_NUM_INTEROP_THREADS": share, "OMP_NUM_THREADS": share}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
    return env


def command_line(given: dict) -> list[str]:
    """Flags that give a worker the same settings (hparams fields)."""
    flags = []
    for name, values in given.items():
        texts = [repr(v) if isinstance(v, float) else str(v)
                 for v in values]
        flags.append(f"--{name}={','.join(texts)}")
    return flags


def check_round_trip(given: dict, flags: list[str]) -> None:
    """The workers must plan the very grid the chief planned."""
    import cli
    flag_values = cli.make_flags({"sweep_dir": "", "workers": ""})
    flag_values(["tune.py", *flags])
    if cli.given_on_command_line(flag_values) != dict(given):
        raise RuntimeError(f"the workers' flags {flags} do not give the "
                           "sweep's settings back")


# --- The chief ----------------------------------------------------------------


def serve(oracle):
    """keras-tuner's oracle service on 127.0.0.1, on a free port; returns
    (server, port)."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    protos.get_service_grpc().add_OracleServicer_to_server(
        oracle_chief.OracleServicer(oracle), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def prestart(sweep_dir, given: dict, workers: int,
             announce: bool = True) -> "WorkerPool":
    """The worker processes, started before this process loads TensorFlow:
    each loads it, then waits for the port `run` publishes."""
    flags = [f"--sweep_dir={sweep_dir}", *command_line(given)]
    check_round_trip(given, flags[1:])
    gpus, cores = gpu_ids(), cpu_count()
    port_file = os.path.join(tempfile.mkdtemp(prefix="bpfree-oracle-"),
                             "port")
    base = {**os.environ, LAUNCHER_ENV: str(os.getpid()),
            WORKERS_ENV: str(workers), PORT_FILE_ENV: port_file,
            "KERASTUNER_ORACLE_IP": "127.0.0.1"}
    base.pop("KERASTUNER_ORACLE_PORT", None)
    if not announce:
        base[QUIET_ENV] = "1"
    pool = WorkerPool(
        [sys.executable, os.path.join(HERE, "tune.py"), *flags],
        [{**base, **worker_environment(k + 1, workers, gpus, cores)}
         for k in range(workers)], port_file)
    pool.start_all()
    return pool


def run(tuner, pool: "WorkerPool", sweep, workers: int,
        details: bool = False) -> None:
    """Serves the grid of `sweep` (a sweep_plan.Sweep) to the workers of
    `pool` (`prestart`) until every one has found it done.  `details`
    (-v): keras-tuner's own trial tables."""
    tuner.oracle.verbose = 1 if details else 0
    tuner.save()  # (keras-tuner's chief saves before serving)
    server, port = serve(tuner.oracle)
    try:
        pool.publish_port(port)
        pool.wait()
    except Interrupted:  # (cli.py prints where it stopped)
        pool.stop()
        from runtime import progress
        import sweep_results
        progress.workers_stopped(workers,
                                 sweep_results.finished_trials(sweep),
                                 len(sweep.configs))
        raise
    finally:
        pool.stop()
        server.stop(0)


def max_restarts() -> int:
    return int(os.environ.get("BPFREE_MAX_RESTARTS", "5"))


class WorkerPool:
    """The worker processes: started, restarted after a crash, stopped."""

    def __init__(self, command, environments, port_file=None):
        self.command, self.environments = command, environments
        self.port_file = port_file
        self.processes = [None] * len(environments)
        self.restarts = [0] * len(environments)
        self.done = [False] * len(environments)

    def start(self, k):
        # stdout and stderr are this process's: one line per trial, whole.
        self.processes[k] = subprocess.Popen(self.command,
                                             env=self.environments[k])

    def start_all(self):
        for k in range(len(self.processes)):
            self.start(k)

    def publish_port(self, port: int) -> None:
        """The oracle's port, to the waiting workers (written whole: a
        rename) and to any worker started again later."""
        for env in self.environments:
            env["KERASTUNER_ORACLE_PORT"] = str(port)
        partial = self.port_file + ".partial"
        with open(partial, "w") as f:
            f.write(str(port))
        os.replace(partial, self.port_file)

    def wait(self):
        """Until every worker has ended with status 0; restarts crashed
        ones; raises on one that must not be retried."""
        while not all(self.done):
            for k, process in enumerate(self.processes):
                if self.done[k] or process.poll() is None:
                    continue
                self.ended(k, process.returncode)
            time.sleep(POLL_SECONDS)

    def ended(self, k, status):
        name = f"worker{k + 1}"
        if status == 0:
            self.done[k] = True
            return
        if status in NOT_RETRIED:
            self.stop()
            raise WorkerStopped(name, status, NOT_RETRIED[status])
        if status in (-signal.SIGINT, -signal.SIGTERM, 130, 143):
            raise Interrupted(signal.SIGINT if status in (-signal.SIGINT, 130)
                              else signal.SIGTERM)
        reason = (f"killed by signal {signal.Signals(-status).name[3:]}"
                  if status < 0 else f"exit status {status}")
        if self.restarts[k] >= max_restarts():
            self.stop()
            raise RuntimeError(f"{name} crashed ({reason}) "
                               f"{self.restarts[k] + 1} times; giving up "
                               "(rerun the same command to continue)")
        self.restarts[k] += 1
        print(f"launcher: {name} crashed ({reason}); restarting it "
              f"({self.restarts[k]}/{max_restarts()}); its trial resumes "
              "from its last finished epoch", file=sys.stderr, flush=True)
        self.start(k)

    def stop(self):
        """SIGTERM to every worker still running, SIGKILL after
        STOP_SECONDS."""
        running = [p for p in self.processes
                   if p is not None and p.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.time() + STOP_SECONDS
        for process in running:
            try:
                process.wait(max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.port_file:
            shutil.rmtree(os.path.dirname(self.port_file),
                          ignore_errors=True)


# --- A worker -------------------------------------------------------------------


def is_launched_worker() -> bool:
    return bool(os.environ.get(LAUNCHER_ENV))


def become_worker() -> None:
    """In a worker this launcher started, before TensorFlow loads: die with
    the chief (even by SIGKILL), and end without a line of its own on
    Ctrl-C or SIGTERM (the chief stops the sweep and says where; the trial
    resumes on rerun)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # (not Linux: no such guard)
        pass
    if str(os.getppid()) != os.environ[LAUNCHER_ENV]:
        os._exit(1)  # the chief ended before the guard was set
    if "KERASTUNER_ORACLE_PORT" not in os.environ:
        import keras_tuner  # noqa: F401  (TensorFlow, while the chief's loads)
        os.environ["KERASTUNER_ORACLE_PORT"] = wait_for_port(
            os.environ[PORT_FILE_ENV])


def wait_for_port(port_file) -> str:
    """The port the chief publishes once it serves (it kills this process
    if it ends first: PR_SET_PDEATHSIG)."""
    while True:
        try:
            with open(port_file) as f:
                return f.read().strip()
        except FileNotFoundError:
            time.sleep(PORT_POLL_SECONDS)


def sweep_workers() -> int:
    """How many trials of this process's sweep run at once."""
    return int(os.environ.get(WORKERS_ENV, "1")) if is_launched_worker() \
        else 1


def announces() -> bool:
    return os.environ.get(QUIET_ENV) != "1"
