"""Several processes (hosts) and preemption, on JAX's own multi-process runtime.

    initialize()                 jax.distributed.initialize from JAX_* variables or cluster detection
    with PreemptionWatch() as w:
        ... w.reached(step) ...  True at the step where every process stops and saves

On TPU VMs and under SLURM, ``jax.distributed.initialize()`` finds the
coordinator, the process count and this process's index by itself. Elsewhere
(a few machines, or several processes on one) they come from
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.

Preemption. A scheduler (SLURM, Kubernetes, a preemptible VM) sends SIGTERM
some seconds before it kills the job. With several processes, JAX's preemption
service catches it on any process and agrees with the others on one step,
max(current steps) + 1, at which ``multihost_utils.reached_preemption_sync_point``
is True on all of them; every process saves there. With one process and no
runtime, a signal handler is enough. SIGINT (Ctrl-C) counts as a preemption too;
a second one stops at once.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize() -> None:
    """Starts JAX's multi-process runtime; call before anything touches a device.

    Reads JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax.distributed.initialize reads
    JAX_COORDINATOR_ADDRESS itself, but not these two); where they are unset,
    JAX detects the cluster (TPU, SLURM, Open MPI, ...). On CPU the processes
    exchange collectives through gloo unless JAX_CPU_COLLECTIVES_IMPLEMENTATION
    says otherwise.

    Raises ValueError naming the variable if one is not a non-negative integer.
    """
    numbers = {}
    for name in ENVIRONMENT[1:]:
        value = os.environ.get(name)
        if value is not None and not value.isdigit():
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        numbers[name] = None if value is None else int(value)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(num_processes=numbers["JAX_NUM_PROCESSES"],
                               process_id=numbers["JAX_PROCESS_ID"])


class PreemptionWatch:
    """A context in which SIGTERM and SIGINT ask the training loop to stop at an agreed step.

    ``reached(step)`` must be called by every process after each step, with the
    same step numbers. Without the multi-process runtime the handlers set a flag;
    with it, SIGTERM is left to JAX's preemption service and SIGINT is passed on to
    it as a SIGTERM, so that all processes stop at the step it chooses.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only: nothing to watch here
        signals = (signal.SIGINT,) if jax.distributed.is_initialized() else (signal.SIGTERM, signal.SIGINT)
        for number in signals:
            self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _on_signal(self, number: int, frame) -> None:
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signal_name = signal.Signals(number).name
        if jax.distributed.is_initialized():
            os.kill(os.getpid(), signal.SIGTERM)  # to the runtime's notifier, which tells the other processes

    def reached(self, step: int) -> bool:
        """True once a preemption was signalled (to any process) and ``step`` is where all stop."""
        if jax.distributed.is_initialized():
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal_name is not None


class Preempted(Exception):
    """Training stopped on a preemption signal, after saving a checkpoint at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}, checkpoint saved; rerun the same command to resume")
        self.step = step
