#!/usr/bin/env bash
# Installs the two third-party mock LLM servers that the integration tests
# talk to, at pinned versions, into one directory (default:
# ${CARGO_TARGET_DIR:-target}/test-peers, taken from the repo root).
#   DIR/venv : Python venv with llmock (PyPI)
#   DIR/npm  : npm prefix with @copilotkit/aimock (npm registry)
# Re-running is cheap: each part is skipped when the pinned version is there.
# Prints the two server executables, one per line, at the end.
set -euo pipefail

LLMOCK_VERSION=0.2.2
AIMOCK_VERSION=1.43.0

cd "$(dirname "$0")/.."
dir=${1:-${CARGO_TARGET_DIR:-target}/test-peers}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# llmock: ask the venv's own interpreter for the installed version, which
# does not depend on the CLI having a --version flag.
venv=$dir/venv
have_llmock() {
    [[ -x $venv/bin/llmock ]] &&
        [[ $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llmock"))' 2>/dev/null) == "$LLMOCK_VERSION" ]]
}
if ! have_llmock; then
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "llmock==$LLMOCK_VERSION"
    have_llmock || { echo "llmock $LLMOCK_VERSION did not install" >&2; exit 1; }
fi

# aimock: the version is read from the installed package.json. The package
# ships two bins, `aimock` and `llmock`; the tests use `llmock` (the plain
# mock server, flags -p/-h/-f), not to be mixed up with the Python llmock.
npmdir=$dir/npm
aimock_pkg=$npmdir/node_modules/@copilotkit/aimock/package.json
have_aimock() {
    [[ -x $npmdir/node_modules/.bin/llmock && -f $aimock_pkg ]] &&
        [[ $(node -p 'require(process.argv[1]).version' "$aimock_pkg" 2>/dev/null) == "$AIMOCK_VERSION" ]]
}
if ! have_aimock; then
    mkdir -p "$npmdir"
    # A package.json of its own keeps npm from walking up to another project.
    [[ -f $npmdir/package.json ]] || echo '{"private": true}' >"$npmdir/package.json"
    npm install --prefix "$npmdir" --no-audit --no-fund --save-exact --loglevel=error \
        "@copilotkit/aimock@$AIMOCK_VERSION"
    have_aimock || { echo "@copilotkit/aimock $AIMOCK_VERSION did not install" >&2; exit 1; }
fi

echo "$venv/bin/llmock"
echo "$npmdir/node_modules/.bin/llmock"
