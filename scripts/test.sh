#!/usr/bin/env bash
# The test command: `bash scripts/test.sh [pytest args...]`, from any directory.
#
# On a fresh Debian 12 machine (as root, or with sudo) it installs the servers the tests start
# (Prometheus, Alertmanager, Pushgateway, PostgreSQL 15, node + npm), creates .venv, installs the
# package with its dev extra and the pinned npm packages the dashboard schema test uses
# (into $INVARIANTKIT_NPM_DIR, default ~/.cache/invariantkit/npm), then runs, stopping at the
# first failure:
#   ruff check, ruff format --check, mypy --strict src, mkdocs build --strict (if mkdocs.yml),
#   pytest (with the given args; "no tests collected" is a failure).
#
# SKIP_LINT=1 skips ruff, mypy and mkdocs (fast local iteration).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
START=$SECONDS

banner() { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}
# run "step name" cmd args...: runs cmd, fails fast with the step name and exit code.
run() {
    local name=$1
    shift
    banner "$name"
    local code=0
    "$@" || code=$?
    [[ $code -eq 0 ]] || fail "$name (exit $code)"
}

# --- Debian packages -------------------------------------------------------------------------
need_apt=()
for bin in prometheus promtool prometheus-alertmanager amtool prometheus-pushgateway; do
    command -v "$bin" >/dev/null 2>&1 || need_apt+=("$bin")
done
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || need_apt+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
packages=(prometheus prometheus-alertmanager prometheus-pushgateway postgresql-15 redis-server)
# node + npm type-check the dashboards against Grafana's published schema (@grafana/schema).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need_apt+=(node)
    packages+=(nodejs npm)
fi
# A bare Debian image may lack python3 or its venv module.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
    packages+=(python3 python3-venv)
fi
if ((${#need_apt[@]})); then
    banner "apt-get install (missing: ${need_apt[*]})"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || fail "missing ${need_apt[*]}: run as root to install ${packages[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq || fail "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null || fail "apt-get install ${packages[*]}"
fi

# --- virtualenv ----------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    run "create .venv" python3 -m venv "$VENV"
fi
export PATH="$VENV/bin:$PATH"
run "pip install -e .[dev]" timeout 600 "$VENV/bin/python" -m pip install -q -e '.[dev]'

# --- npm: Grafana's dashboard schema and TypeScript, pinned (tests/test_dashboards.py) ------
export INVARIANTKIT_NPM_DIR="${INVARIANTKIT_NPM_DIR:-$HOME/.cache/invariantkit/npm}"
npm_pins=("@grafana/schema@11.6.2" "typescript@5.8.3")
if [[ "$(cat "$INVARIANTKIT_NPM_DIR/.pins" 2>/dev/null)" != "${npm_pins[*]}" ]]; then
    mkdir -p "$INVARIANTKIT_NPM_DIR"
    run "npm install ${npm_pins[*]}" timeout 600 npm install --prefix "$INVARIANTKIT_NPM_DIR" \
        --no-audit --no-fund --save-exact --loglevel=error "${npm_pins[@]}"
    echo "${npm_pins[*]}" >"$INVARIANTKIT_NPM_DIR/.pins"
fi

# --- lint, types, docs ---------------------------------------------------------------------
if [[ "${SKIP_LINT:-0}" != 1 ]]; then
    lint_paths=()
    for dir in src tests examples benchmarks; do
        [[ -e $dir ]] && lint_paths+=("$dir")
    done
    run "ruff check ${lint_paths[*]}" ruff check "${lint_paths[@]}"
    run "ruff format --check ${lint_paths[*]}" ruff format --check "${lint_paths[@]}"
    run "mypy --strict src" mypy --strict src
    run "lint-imports (layers)" lint-imports
    if [[ -f mkdocs.yml ]]; then
        site=$(mktemp -d)
        trap 'rm -rf "$site"' EXIT
        run "mkdocs build --strict" mkdocs build --strict --quiet --site-dir "$site"
    fi
else
    banner "SKIP_LINT=1: skipping ruff, mypy and mkdocs"
fi

# --- tests ---------------------------------------------------------------------------------
banner "pytest $*"
code=0
# Bounded even if a test hangs: SIGINT lets pytest run its teardown (servers get stopped).
timeout --signal=INT --kill-after=30 900 pytest "$@" || code=$?
case $code in
    0) ;;
    5) fail "pytest collected no tests" ;;
    124 | 137) fail "pytest timed out after 15 minutes" ;;
    *) fail "pytest (exit $code)" ;;
esac

banner "all checks passed in $((SECONDS - START))s"
