# Helpers of reproduce_table.sh and compare_curricula.sh (sourced; expects $PYTHON, $step and $steps).

# header NAME COMMAND: one line before each training, so a long log says which row is running and how to rerun it
header() {
  step=$(( step + 1 ))
  echo "== [$step/$steps] $1: python $2 =="
}

# refuse_existing_results OUT PATH...: stop before anything runs if a PATH is a finished run (bookkeeping.holds_run:
# a run folder with a completed epoch) or an existing file, so a script never replaces results it was not asked to
refuse_existing_results() {
  local out=$1 taken; shift
  taken=$($PYTHON -c 'import sys, bookkeeping
from pathlib import Path
print(", ".join(Path(p).name for p in sys.argv[1:] if Path(p).is_file() or bookkeeping.holds_run(p)))' "$@")
  if [[ -n $taken ]]; then
    echo "error: $out already holds results ($taken); pass --overwrite to replace them, or --out for a new folder." >&2
    exit 2
  fi
}

# hold_out_lock OUT: one script at a time per --out. An flock(1) on OUT/.lock (the lock file of
# bookkeeping.hold_folder_lock), held by this shell and the runs it starts; the OS drops it when they end, so a killed
# script leaves no stale lock. Where flock(1) is missing (macOS) each run still locks its own folder.
hold_out_lock() {
  command -v flock > /dev/null || return 0
  mkdir -p "$1"
  exec {out_lock}>> "$1/.lock"
  if ! flock -n "$out_lock"; then
    echo "error: --out $1 is in use by $(cat "$1/.lock" 2> /dev/null || echo another process); wait for it to end" \
      "(or stop it), or pick another --out." >&2
    exit 2
  fi
  echo "pid $$ on $(hostname) ($0 --out $1)" > "$1/.lock"  # left in place at exit: removing it would race a waiter
}
