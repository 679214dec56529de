"""Starting child processes that never outlive hareg.

``with_pdeathsig(argv)`` wraps a command so the kernel SIGKILLs the child
when its parent dies, even by SIGKILL: a fresh interpreter sets
PR_SET_PDEATHSIG (the setting survives execve), checks that the parent is
still the one that started it, then becomes the program (same pid).

Not a preexec_fn: that forces a plain fork() in the parent, which runs the
pthread_atfork handlers of every library loaded there; gRPC's (grpc.aio is
loaded wherever EtcdKV is) intermittently aborted the child with SIGABRT
before it could exec.  Without preexec_fn, subprocess uses vfork/exec.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["with_pdeathsig"]

_PDEATHSIG_TRAMPOLINE = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("hareg: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit("hareg: the parent died before the child started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` (its first item an executable path) wrapped so that the child
    is SIGKILLed when this process (more precisely: the calling thread) dies.
    Linux; elsewhere ``argv`` is returned unchanged."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_TRAMPOLINE, str(os.getpid()), *argv]
