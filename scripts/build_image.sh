#!/usr/bin/env bash
# Builds one image with a standard `docker build`, showing only what matters: one line
# when every step came from the layer cache, else the build's output from the first
# step that actually ran (a compile, a copied file that changed). A failed build shows
# its output and a line saying which image and Dockerfile failed.
#
#   scripts/build_image.sh DOCKERFILE TAG        (context: the repository root)
#
# Environment: VERBOSE=1 shows the whole `docker build` output, cached steps included.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
    echo "usage: scripts/build_image.sh DOCKERFILE TAG" >&2
    exit 2
fi
dockerfile=$1
tag=$2
build=(docker build --force-rm -f "$dockerfile" -t "$tag" .)

if [ "${VERBOSE:-0}" = 1 ]; then
    exec "${build[@]}"
fi

# The legacy builder prints `Step i/n : INSTRUCTION`, then ` ---> Using cache` for a
# step taken from the cache. FROM steps are never "cached"; they only name the base.
# Each step's line is held back until the next line tells: a cached step or a FROM is
# dropped; a step that runs is shown with whatever it prints, as it comes, without the
# builder's bookkeeping (` ---> <id>`, intermediate containers, colour codes).
if "${build[@]}" 2>&1 | awk -v tag="$tag" '
    function show(line) { print line; fflush() }
    { gsub(/\033\[[0-9;]*m/, "") }
    # The CLI notice that the legacy builder is deprecated (BuildKit is not used here).
    /^DEPRECATED: The legacy builder/ { notice = 1; next }
    notice && /^ / { next }
    notice && /^$/ { notice = 0; next }
    /^Step [0-9]+\/[0-9]+ : / { header = $0; from = ($4 ~ /^FROM$/); pending = 1; next }
    pending && /^ ---> Using cache/ { pending = 0; cached++; next }
    pending && from { pending = 0; next }
    pending { pending = 0; ran++; show(header) }
    /^ ---> / { next }
    /^Removing intermediate container/ { next }
    /^Successfully tagged/ { tagged = 1; next }
    /^Successfully built/ { next }
    /^Sending build context/ { next }
    /^$/ { next }
    # Anything else (what a step prints, a warning, an error) is shown.
    { show($0) }
    END {
        if (!ran) print tag ": up to date (" cached " steps from the cache)"
        else if (tagged) print tag ": built (" ran " steps ran, " cached " from the cache)"
    }
'; then
    exit 0
fi
echo "docker build of $tag ($dockerfile) failed: its output is above" \
    "(VERBOSE=1 shows every step)" >&2
exit 1
