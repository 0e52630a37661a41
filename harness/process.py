"""Process-wide settings and worker-process lifetime. Entry points apply the settings (the `bench`
command, `python -m medssl_bench.harness`, benchmark scripts, the test session); importing a module
never does. Worker processes (evaluation pool, sweep workers) call die_with_parent."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import warnings


def configure_process() -> None:
    # Idle OpenMP threads sleep instead of spinning. With spinning threads, a busy core (a data-
    # loading worker, another job) slows a 2-thread CPU step ~8x (measured: ResNet-18 step 3.2 s vs
    # 0.42 s). Must be set before torch loads its OpenMP runtime; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Third-party deprecation notices (lightly's DINO head uses the old weight_norm, its VICRegL
    # crop the old get_image_size) are not the user's business.
    warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
    warnings.filterwarnings("ignore", message=".*get_image_size.*is deprecated.*")


def die_with_parent(parent_pid: int) -> None:
    """In a worker process: end when `parent_pid` ends, however it ends. A killed parent runs no
    handler (SIGKILL cannot be caught), so without this its workers run on, then hang on a dead pipe.
    Linux: the kernel sends SIGKILL at the parent's death (PR_SET_PDEATHSIG); elsewhere a thread polls
    the parent pid. Call it from the worker's first line, in the main thread."""
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SIGNAL_HINTS = {signal.SIGKILL: "out of memory?", signal.SIGSEGV: "a crash in native code",
                 signal.SIGBUS: "a crash in native code", signal.SIGABRT: "aborted by native code",
                 signal.SIGILL: "a crash in native code"}


def describe_exit(exitcode: int | None) -> str:
    """Why a worker process ended without its result, from multiprocessing's exitcode (-N: signal N).
    SIGKILL is what the kernel's OOM killer sends, hence the hint."""
    if exitcode is None or exitcode >= 0:
        return f"worker exited with status {exitcode} before finishing"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"worker killed by signal {number}"
    hint = _SIGNAL_HINTS.get(signal.Signals(number))
    return f"worker killed by signal {number} ({name}: {hint})" if hint else f"worker killed by signal {number} ({name})"
