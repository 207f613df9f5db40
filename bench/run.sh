#!/usr/bin/env bash
# The proxy benchmark, side by side in one invocation (see BENCHMARKS.md):
#
#   bench/run.sh                 # installs what is missing, builds --release, runs every scenario
#   bench/run.sh --rounds 3      # options go to bench/harness.py (--help lists them)
#   bench/run.sh --profile       # perf record of the full path instead (build with [profile.bench])
#   bench/run.sh --instructions  # instructions per request of the tokenrelay scenarios (valgrind)
#   bench/run.sh --baseline BIN  # also run relay/pkjwt/full with another tokenrelay binary (before/after)
#   bench/run.sh --only full,https,forward,mitmproxy,mitmproxy-fwd   # some scenarios only
#
# Installs when missing: nginx and wrk (Debian packages, apt-get), `jose` (npm, pinned by
# bench/node/package-lock.json) and mitmproxy + PyJWT (PyPI, bench/requirements.txt) into
# target/bench-tools/. Builds benches/sign_cost.rs and benches/connect_load.rs (the CONNECT
# load generator of the forward-mode scenarios). Everything listens on 127.0.0.1 only; every
# loop is bounded in time.
# The table goes to stdout and to target/bench-run/results.md (raw numbers: results.json).
set -euo pipefail

# All in one function: bash reads a script as it runs, and this way an edit of the file
# during a run cannot change what the run does.
main() {
    cd "$(dirname "$0")/.."
    root=$(pwd)
    tools="$root/target/bench-tools"
    mkdir -p "$tools"

    say() { printf '%s\n' "$*" >&2; }

    # --- system tools -----------------------------------------------------------------------------
    missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(util-linux)
    if [[ "$*" == *--profile* ]]; then command -v perf >/dev/null || missing+=(linux-perf); fi
    if [[ "$*" == *--instructions* ]]; then command -v valgrind >/dev/null || missing+=(valgrind); fi
    if ((${#missing[@]})); then
        say "installing ${missing[*]} (apt-get)"
        sudo=""
        [[ $(id -u) == 0 ]] || sudo="sudo"
        # Do not let the package start a system nginx on port 80: the harness runs its own.
        made_policy=""
        if [[ ! -e /usr/sbin/policy-rc.d && $(id -u) == 0 ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
        fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
        [[ -z "$made_policy" ]] || rm -f /usr/sbin/policy-rc.d
    fi
    command -v node >/dev/null || { say "bench/run.sh needs Node.js >= 18 (node, npm)"; exit 1; }
    command -v python3 >/dev/null || { say "bench/run.sh needs python3 with venv"; exit 1; }

    # --- the Node signing proxy (jose from npm) ---------------------------------------------------
    mkdir -p "$tools/node"
    cp bench/node/package.json bench/node/package-lock.json bench/node/proxy.mjs "$tools/node/"
    if ! cmp -s bench/node/package-lock.json "$tools/node/.installed-lock" 2>/dev/null; then
        say "installing jose (npm ci)"
        (cd "$tools/node" && npm ci --no-audit --no-fund --silent >&2)
        cp bench/node/package-lock.json "$tools/node/.installed-lock"
    fi

    # --- mitmproxy + PyJWT (PyPI) -----------------------------------------------------------------
    venv="$tools/venv"
    if ! cmp -s bench/requirements.txt "$venv/.installed-requirements" 2>/dev/null; then
        say "installing mitmproxy and PyJWT (pip, $venv)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt >&2
        cp bench/requirements.txt "$venv/.installed-requirements"
    fi

    # --- tokenrelay (release) and the sign-cost bench ---------------------------------------------
    if [[ "$*" == *--profile* ]]; then
        say "building tokenrelay with [profile.bench] (release + line tables)"
        cargo build -q --profile bench --bin tokenrelay >&2
    else
        say "building tokenrelay --release"
        cargo build -q --release --bin tokenrelay >&2
    fi
    # The executable of benches/$1.rs, built --release (harness = false: a plain program).
    bench_exe() {
        cargo build -q --release --bench "$1" --message-format=json 2>/dev/null |
            "$venv/bin/python" -c 'import json, sys
[print(m["executable"]) for m in map(json.loads, sys.stdin)
 if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable")]' "$1"
    }
    sign_cost=$(bench_exe sign_cost)
    [[ -n "$sign_cost" ]] || { say "could not build benches/sign_cost.rs"; exit 1; }
    # The CONNECT load generator of the forward scenarios (wrk cannot send CONNECT).
    connect_load=$(bench_exe connect_load)
    [[ -n "$connect_load" ]] || { say "could not build benches/connect_load.rs"; exit 1; }

    exec "$venv/bin/python" bench/harness.py --tokenrelay "$root/target/release/tokenrelay" --sign-cost "$sign_cost" \
        --connect-load "$connect_load" "$@"
}

main "$@"
