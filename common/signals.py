"""A job scheduler's pre-emption: SIGTERM, then SIGKILL after a grace period. The first SIGTERM lets the run finish
the epoch in progress, write its checkpoint through the normal end-of-epoch path, and exit with STOPPED (143, the
shell's code for SIGTERM) and one line on how to resume; `--resume` then continues exactly, as after any completed
epoch. A second SIGTERM stops at once (the run is still resumable from its last completed epoch, as after a kill).

Ctrl-C (SIGINT) is left as Python makes it: an immediate KeyboardInterrupt, which errors.run_cli turns into one line
and exit code 130; the epoch in progress is lost, the earlier ones are kept.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading

STOPPED = 128 + signal.SIGTERM  # the exit code of a run stopped by SIGTERM after saving its epoch
_requested = False


def stop_after_epoch_on_sigterm() -> None:
    """Install the handler (in the main thread, before training starts)."""
    global _requested
    _requested = False
    signal.signal(signal.SIGTERM, request_stop)


def request_stop(signum, frame) -> None:
    global _requested
    if _requested:  # the second one: stop now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _requested = True
    # os.write, not print: a handler may run in the middle of another print to the same stream
    os.write(2, b"SIGTERM: finishing this epoch, then saving it and stopping (a second SIGTERM stops at once)\n")


def sigterm_from_parent_only(worker_id: int) -> None:
    """DataLoader worker_init_fn: a worker ignores a SIGTERM from anyone but its parent. A scheduler signals the whole
    process group, and a worker that died of it would end the epoch the main process is finishing; but the parent's
    own SIGTERM (multiprocessing's terminate(), with which torch and multiprocessing's exit hook end a worker that did
    not stop the orderly way) must still end it, or the parent's exit waits for it forever. So SIGTERM is blocked and
    a thread takes each one with sigwaitinfo, which names the sender. Where sigwaitinfo is missing (macOS) the worker
    ignores SIGTERM, and the loaders' owners stop their workers the orderly way (devices.close_loader)."""
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    # the process that started this worker (under forkserver or spawn, os.getppid() would name the server instead)
    parent = multiprocessing.parent_process().pid
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread starts: they inherit it

    def wait_for_parent() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(STOPPED)

    threading.Thread(target=wait_for_parent, name="sigterm-from-parent", daemon=True).start()


def stop_requested() -> bool:
    """Whether SIGTERM arrived, agreed across torchrun's processes (any one's signal stops them all at this epoch)."""
    import torch.distributed as dist  # here: the rest of this module needs no torch

    if not dist.is_initialized():
        return _requested
    import torch

    flag = torch.tensor([float(_requested)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def exit_if_stop_requested(folder, done: str) -> None:
    """After an epoch's checkpoint is written: stop with the line to resume, if SIGTERM asked for it."""
    if not stop_requested():
        return
    script = os.path.basename(sys.argv[0]) or "the script"
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"stopped by SIGTERM after {done}, which is saved; continue with: python {script} --resume {folder}",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(STOPPED)
