# Sourced by ./run and ./test: make .venv and install the pinned requirements once.
# Usage: bootstrap_venv [more requirement files]
# ./run and ./test share one install: both get the runtime and the dev requirements under one
# stamp, so neither reinstalls after the other; extra files (requirements-gpu.txt) join them.
set -euo pipefail

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11 or newer is needed; install it (e.g. apt-get install python3 python3-venv) or set PYTHON." >&2
  return 1
}

bootstrap_venv() {
  local python stamp wanted requirements
  local -a files
  # One sorted, de-duplicated list whichever command asked, so the stamp is the same.
  mapfile -t files < <(printf '%s\n' requirements.txt requirements-dev.txt "$@" | sort -u)
  if [ ! -x .venv/bin/python ]; then
    python=$(find_python)
    echo "[setup       ] creating .venv with $python"
    if ! "$python" -m venv .venv; then
      echo "Could not create a virtualenv; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)." >&2
      return 1
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  stamp=.venv/.requirements-stamp
  wanted=$(cat "${files[@]}" requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  echo "[setup       ] installing pinned requirements (first run takes a few minutes)"
  # torch first, so nothing drags in a different build; TORCH_INDEX_URL picks e.g. the CPU wheels.
  local torch_pin
  torch_pin=$(grep -E '^torch==' requirements.txt)
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install --quiet "$torch_pin" --index-url "$TORCH_INDEX_URL"
  else
    .venv/bin/python -m pip install --quiet "$torch_pin"
  fi
  local -a requirement_args=()
  for requirements in "${files[@]}"; do
    requirement_args+=(-r "$requirements")
  done
  .venv/bin/python -m pip install --quiet "${requirement_args[@]}"
  .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
  echo "$wanted" > "$stamp"
}
