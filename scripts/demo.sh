#!/usr/bin/env bash
# The main job: `bash scripts/demo.sh [demo options...]`, from any directory, on a fresh machine.
# Creates .venv if needed, installs invariantkit with every backend SDK, then runs
# `invariantkit demo` with the given options (e.g. --seed 7, --json, --serve 9464).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv"

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv >/dev/null
fi
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -e '.[all]'
exec "$VENV/bin/invariantkit" demo "$@"
