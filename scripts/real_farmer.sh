#!/usr/bin/env bash
# Build (once, then cached) a virtualenv holding the real farmer client, downstream-farmer 0.1.8
# from its PyPI sdist, with its dependencies, made to run on Python 3.11 by the mechanical patches
# in scripts/real_farmer.patch (each one is explained at the top of that file). Prints the venv's
# path on stdout; the client is then "$VENV/bin/downstream".
#
#   VENV=$(scripts/real_farmer.sh) && "$VENV/bin/downstream" --help
#
# Environment:
#   DOWNSTREAM_REAL_FARMER_VENV  where the venv lives
#                                (default $HOME/.cache/downstream-node/real-farmer-0.1.8)
#   PYTHON                       the interpreter to build it with (default python3.11)
#   REAL_FARMER_REBUILD=1        rebuild even if the cached venv is up to date
#
# The venv is rebuilt when it is missing, when its build did not finish, or when the patch or
# the pinned versions below change: their SHA-256 is stored in the venv once the build succeeds.
# Needs PyPI (pip's ordinary index) and the `patch` and `unzip` tools; all progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_file="$here/real_farmer.patch"
venv="${DOWNSTREAM_REAL_FARMER_VENV:-$HOME/.cache/downstream-node/real-farmer-0.1.8}"
python="${PYTHON:-python3.11}"
stamp="$venv/.real-farmer-build.sha256"

# Sources patched before install (sdists, --no-binary). siggy is used as published.
sdists=(downstream-farmer==0.1.8 storj-heartbeat==0.1.10 RandomIO==0.2.1)
# Everything else, pinned. pycoin 0.52 is the last release siggy 0.1.0 works with; pycryptodome
# stands in for pycrypto (does not build on 3.11); setuptools < 72 still has
# setuptools.command.test, which downstream-farmer's setup.py imports.
pins=(
    "setuptools>=65,<72"
    "wheel"
    "pycoin==0.52"
    "siggy==0.1.0"
    "pycryptodome==3.23.0"
    "six==1.17.0"
    "requests==2.32.5"
    "colorama==0.4.6"
)

log() { printf 'real_farmer: %s\n' "$*" >&2; }

want=$({ cat "$patch_file"; printf '%s\n' "${sdists[@]}" "${pins[@]}"; } | sha256sum | cut -d' ' -f1)

if [[ "${REAL_FARMER_REBUILD:-0}" != 1 && -x "$venv/bin/downstream" && -f "$stamp" ]] &&
    [[ "$(cat "$stamp")" == "$want" ]]; then
    printf '%s\n' "$venv"
    exit 0
fi

command -v patch >/dev/null || { log "needs the 'patch' tool (apt-get install patch)"; exit 1; }
command -v unzip >/dev/null || { log "needs the 'unzip' tool (apt-get install unzip)"; exit 1; }

mkdir -p "$(dirname "$venv")"
# One builder at a time for the same venv.
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/real-farmer-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building $venv (patch sha256 $want)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install -q "${pins[@]}" >&2

log "fetching sdists: ${sdists[*]}"
"${pip[@]}" download -q --no-deps --no-binary :all: -d "$work/dl" "${sdists[@]}" >&2
mkdir "$work/src"
for f in "$work"/dl/*; do
    case "$f" in
    *.zip) unzip -q "$f" -d "$work/src" ;;
    *.tar.gz) tar -xzf "$f" -C "$work/src" ;;
    *) log "unexpected download $f"; exit 1 ;;
    esac
done
# The farmer and heartbeat sdists have CRLF line endings; the patch is written against LF.
find "$work/src" -type f -name '*.py' -exec sed -i 's/\r$//' {} +
patch -p1 -d "$work/src" --no-backup-if-mismatch -s <"$patch_file" >&2

log "installing the patched sources"
# --no-build-isolation: build with the venv's setuptools (< 72), see pins above.
"${pip[@]}" install -q --no-build-isolation \
    "$work/src/RandomIO-0.2.1" \
    "$work/src/storj-heartbeat-0.1.10" \
    "$work/src/downstream-farmer-0.1.8" >&2

# Smoke test: every module the client imports, and the Merkle heartbeat it will be sent.
"$venv/bin/python" - >&2 <<'EOF'
import heartbeat, siggy, RandomIO, downstream_farmer.shell, downstream_farmer.client as c
assert c.heartbeat_types["Merkle"] is heartbeat.Merkle.Merkle
assert siggy.verify_signature(
    "test message",
    "HyzVUenXXo4pa+kgm1vS8PNJM83eIXFC5r0q86FGbqFcdla6rcw72/ciXiEPfjli3ENfwWuESHhv6K9esI0dl5I=",
    "19qVgG8C6eXwKMMyvVegsi3xCsKyk3Z3jV",
)
EOF
"$venv/bin/downstream" --help >/dev/null

printf '%s\n' "$want" >"$stamp"
log "ready"
printf '%s\n' "$venv"
