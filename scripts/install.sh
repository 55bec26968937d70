#!/usr/bin/env bash
# Create the virtual environment and install the package with its test extras.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch>=2.1,<=2.14.1" "torchvision>=0.16,<=0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[testing]"
