# Shared by the job scripts in this folder (sourced, not run): launch protonfem so that it stops
# cleanly before the time limit and the job comes back to finish.
#
#   launch_resubmittable NAME COMMAND...
#
# Slurm sends SIGTERM to the batch shell ahead of the time limit (#SBATCH --signal=B:TERM@120).
# The launcher (srun or mpiexec) runs in the background so that this shell can take that signal
# and pass it on: bash defers traps while a foreground child runs. srun and MPICH's mpiexec
# forward SIGTERM to every rank; protonfem stops all ranks at the same time step with every file
# complete and exits with 130. If the signal came (the time limit, not a failure), the job is
# requeued, at most MAX_REQUEUES times, and starts again from the top of its script.
# Returns the launcher's exit code.

launch_resubmittable() {
  local name=$1
  shift
  local stopping=0 rc=0 launcher
  echo "$name: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): $*"
  "$@" &
  launcher=$!
  trap 'stopping=1; echo "'"$name"': time limit near, stopping the run"; kill -TERM "$launcher" 2>/dev/null || true' TERM
  wait "$launcher" || rc=$?
  # `wait` returns as soon as the trap has run; wait again for the launcher's own exit code.
  if kill -0 "$launcher" 2>/dev/null; then rc=0; wait "$launcher" || rc=$?; fi
  trap - TERM
  if [ "$stopping" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "${MAX_REQUEUES:-5}" ]; then
    echo "$name: requeueing job $SLURM_JOB_ID to continue where it stopped"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$rc"
}
