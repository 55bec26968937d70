#!/usr/bin/env bash
# Run a command with a display: the current one if set, else a virtual X server (Xvfb + Mesa software OpenGL).
set -euo pipefail
if [ -n "${DISPLAY:-}" ] && [ -z "${CI:-}" ]; then
  exec "$@"
fi
export CELL_UNET_HEADLESS=1
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$@"
