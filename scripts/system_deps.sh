#!/usr/bin/env bash
# Debian packages for a virtual display and software OpenGL (napari needs a real GL context).
set -euo pipefail
PKGS="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libfontconfig1 libdbus-1-3"
missing=()
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif [ -n "${DISPLAY:-}" ]; then
  echo "note: not root, and these Debian packages are missing: ${missing[*]} (a display is set, trying anyway)"
else
  echo "error: these Debian packages are needed and I am not root:" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
