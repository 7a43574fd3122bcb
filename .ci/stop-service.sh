#!/usr/bin/env bash
# Stops the service started by start-service.sh (SIGTERM: it finishes in-flight requests), when
# the process its pid file names is still that service (a pid left by an ended session may have
# been reused by another process).
dir=/tmp/field-attendance-ci
# Alive, and not a zombie left for a parent that does not reap it.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
if [ -f "$dir/pid" ]; then
  pid=$(cat "$dir/pid")
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'field-attendance serve'; then
    kill "$pid" 2>/dev/null || true
    # Until it has finished, so that its port is free for the next: past its own grace (the
    # request timeout and 5 s, then 2 s to close its pool) it is killed.
    for _ in $(seq 1 90); do
      running "$pid" || break
      sleep 0.5
    done
    if running "$pid"; then
      echo "the service was still running 45 s after SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do
        running "$pid" || break
        sleep 0.5
      done
    fi
  fi
  rm -f "$dir/pid"
fi
