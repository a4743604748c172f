#!/usr/bin/env bash
# Makes sure the commands the tests use are installed: each missing one is installed
# with apt-get (as root, or through sudo) from the Debian package of the same name
# (`chromium`, `dash`, `shellcheck`, `make`, `openssl` for `make certs`), so that
# `make test` works on a fresh Debian machine with only the clone, Docker and the Rust
# toolchain.
#
#   scripts/ensure-tools.sh COMMAND...
#
# Exits 1 naming what is missing when it cannot install it (no apt-get, no root/sudo).
set -euo pipefail

missing=()
for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]} (install them; this machine has no apt-get)" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "missing: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    sudo=(sudo)
fi
echo "== installing ${missing[*]} (apt-get)"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
