#!/usr/bin/env bash
# The main job: `bash scripts/demo.sh [demo options...]`, from any directory, on a fresh machine.
# Installs promtool (Debian package prometheus) if missing, creates .venv if needed, installs
# invariantkit with every backend SDK, then runs
# `invariantkit demo` with the given options (e.g. --seed 7, --json, --serve 9464).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv"

packages=()
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3 python3-venv)
fi
# promtool (Debian's prometheus package) evaluates the generated alert rules on the timeline.
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
if ((${#packages[@]})); then
    sudo=()
    [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo=(sudo)
    if [[ $(id -u) -eq 0 || ${#sudo[@]} -gt 0 ]] &&
        "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${packages[@]}" >/dev/null; then
        :
    else
        echo "demo.sh: could not install ${packages[*]} with apt-get; the demo needs promtool" \
            "(Debian package prometheus) to evaluate the alert rules and runs without it." >&2
    fi
fi
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -e '.[all]'
exec "$VENV/bin/invariantkit" demo "$@"
