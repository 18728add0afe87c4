"""The one error type a user can cause, and the entry-point wrapper that turns it into one line and exit code 2."""

import errno
import sys


class UserError(Exception):
    """A mistake in flags, paths or data. The message is one sentence that names the fix."""


def run_cli(main) -> None:
    """Call `main()`; a UserError (also one re-raised from a DataLoader worker) prints one line, no traceback."""
    try:
        main()
    except UserError as err:
        # A worker's error arrives wrapped with its traceback as text; its last line holds our message.
        message = str(err).strip().splitlines()[-1].removeprefix("errors.UserError: ")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write outside the run's atomic files (TensorBoard events, a folder): the same one line as theirs
        print(
            f"error: no space left on the disk ({err.filename or 'writing'}); free some space and run again.",
            file=sys.stderr,
        )
        sys.exit(2)
    except RuntimeError as err:
        if not str(err).startswith("DataLoader worker"):
            raise
        if "Bus error" in str(err):  # torch's words when a worker's batch found no room in shared memory
            print(
                "error: a DataLoader worker was killed by a bus error: /dev/shm is too small for its batches; give "
                "the container more shared memory (docker run --shm-size 8g) or lower --workers, then continue "
                "with --resume RUN_FOLDER.",
                file=sys.stderr,
            )
            sys.exit(2)
        # torch's words for a worker that died; killed by signal 9 is most often the kernel's out-of-memory killer
        print(
            f"error: {str(err).strip().rstrip('.')} (signal 9, Killed, is most often the out-of-memory killer: see "
            "dmesg); lower --workers or --batch-size, then continue with --resume RUN_FOLDER.",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume RUN_FOLDER", file=sys.stderr)
        sys.exit(130)
