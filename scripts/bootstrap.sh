#!/usr/bin/env bash
# Set up a fresh machine for protonfem: system libraries (when root), a Python >= 3.12 found on
# this machine, a virtual environment in .venv and the package with its DOLFINx extra.
# Idempotent: a second run only checks, in a few seconds.
#   scripts/bootstrap.sh            runtime (demo)
#   scripts/bootstrap.sh --test     also the test tools: pytest, scikit-learn, ParaView + xvfb
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

# --- system packages ------------------------------------------------------------------------
# gmsh's wheel links against GL/X libraries; ParaView's pvbatch renders the XDMF in the tests.
SYS_PKGS="libglu1-mesa libgl1 libxcursor1 libxft2 libxinerama1 libxrender1 libfontconfig1 libgomp1"
[ "$WITH_TEST" = 1 ] && SYS_PKGS="$SYS_PKGS paraview xvfb xauth"
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $SYS_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "bootstrap: warning: missing system packages:$missing (install them with apt-get as root)" >&2
  fi
fi

# --- a Python >= 3.12 ------------------------------------------------------------------------
find_python() {
  local cands=()
  [ -n "${PYTHON:-}" ] && cands+=("$PYTHON")
  if command -v pyenv >/dev/null 2>&1; then
    # pyenv's python3.12 shim fails unless PYENV_VERSION is set: use the real binaries.
    cands+=($(ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python3.1[2-9] 2>/dev/null | sort -V -r))
  fi
  cands+=($(ls -d "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9] 2>/dev/null | sort -V -r))
  cands+=(python3.13 python3.12 python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/local/bin/python3.13 /usr/local/bin/python3.12)
  for c in "${cands[@]}"; do
    if "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || { echo "bootstrap: no Python >= 3.12 found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "bootstrap: creating .venv with $PY ($("$PY" --version))"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q -U pip
fi

# --- the package -------------------------------------------------------------------------------
EXTRAS="dolfinx"
[ "$WITH_TEST" = 1 ] && EXTRAS="dolfinx,test"
STAMP=".venv/.protonfem-$EXTRAS-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "bootstrap: installing protonfem[$EXTRAS] into .venv"
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  touch "$STAMP"
fi
# Fails fast, with the import error, if the environment is broken.
.venv/bin/python -c "import dolfinx_solver, dolfinx, gmsh, protonfem.solver.model" \
  || { echo "bootstrap: the environment in .venv cannot import DOLFINx/gmsh (see above)" >&2; exit 1; }
echo "bootstrap: ready (.venv)"
