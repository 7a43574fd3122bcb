#!/usr/bin/env bash
# Stops the service started by start-service.sh (SIGTERM: it finishes in-flight requests).
dir=/tmp/field-attendance-ci
if [ -f "$dir/pid" ]; then
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
fi
