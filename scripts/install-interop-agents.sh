#!/usr/bin/env bash
# Installs the real ACP agents the interop tests (tests/interop/) drive, into the git-ignored
# folder .interop/ at the repository root. Safe to run again: a package already present at the
# pinned version is reused without touching the network.
#
# Without node/npm this prints a loud warning and exits 0; the interop tests then skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=.interop
# Pinned: the tests assert behaviour of exactly this release.
# codex-acp ships its binary through an optional dependency per platform
# (@zed-industries/codex-acp-linux-x64, ...), which npm installs beside it.
PACKAGES=("@zed-industries/claude-agent-acp@0.23.1" "@zed-industries/codex-acp@0.16.0")

warn() {
    printf '\n' >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '!!! WARNING: %s\n' "$@" >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        warn "'$tool' is not on PATH: real ACP agents are NOT installed." \
            "The interop tests against claude-agent-acp and codex-acp will be SKIPPED." \
            "Install Node.js 20+ with npm and run scripts/install-interop-agents.sh again."
        exit 0
    fi
done

# Prints the version of an installed package, or nothing.
installed_version() {
    local manifest="$PREFIX/node_modules/$1/package.json"
    if [ -f "$manifest" ]; then
        node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' \
            "$(pwd)/$manifest"
    fi
}

missing=()
for spec in "${PACKAGES[@]}"; do
    name="${spec%@*}"
    want="${spec##*@}"
    have="$(installed_version "$name")"
    if [ "$have" = "$want" ]; then
        echo "interop agents: $name@$want already installed in $PREFIX/, reusing it"
    else
        echo "interop agents: $name@$want not installed in $PREFIX/ (found: ${have:-nothing})"
        missing+=("$spec")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

mkdir -p "$PREFIX"
echo "interop agents: running npm install --prefix $PREFIX --save-exact ${missing[*]} (node $(node --version))"
npm install --prefix "$PREFIX" --no-audit --no-fund --save-exact "${missing[@]}"

for spec in "${missing[@]}"; do
    name="${spec%@*}"
    want="${spec##*@}"
    have="$(installed_version "$name")"
    if [ "$have" != "$want" ]; then
        echo "interop agents: after npm install, $name is at '${have:-nothing}', expected $want" >&2
        exit 1
    fi
    echo "interop agents: installed $name@$want in $PREFIX/"
done
