#!/usr/bin/env bash
# Builds one image with a standard `docker build`, showing only what matters: one line
# when every step came from the layer cache, else the output of the steps that
# actually ran (a compile, a copied file that changed) and a line with the counts.
# A failed build shows what it printed (the error included) and a line saying which
# image and Dockerfile failed; whether the build failed is `docker build`'s exit
# status, never a guess from its output.
#
#   scripts/build_image.sh DOCKERFILE TAG        (context: the repository root)
#
# Both builders are understood: the legacy one (`Step i/n : …`, ` ---> Using cache`)
# and BuildKit, which `docker build` is where the buildx plugin is installed (asked
# for plain progress output, `#N [stage i/n] …`, `#N CACHED`, `#N DONE`).
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
# BuildKit: one line per event, not a redrawn screen (the legacy builder ignores it).
export BUILDKIT_PROGRESS=plain

if [ "${VERBOSE:-0}" = 1 ]; then
    exec "${build[@]}"
fi

counts=$(mktemp)
trap 'rm -f "$counts"' EXIT

# Legacy builder: each `Step i/n : INSTRUCTION` line is held back until the next line
# tells: ` ---> Using cache` (a cached step, dropped) or anything else (the step runs:
# shown, with whatever it prints, as it comes). FROM steps count neither way; their
# line is shown only before something they print (a pull, an error).
# BuildKit: `#N NAME` opens vertex N; a build step is a name `[stage i/n] …` other than
# FROM. `#N CACHED` counts it cached, output (`#N 0.123 text`) shows its name then
# the text, `#N DONE` counts it run. `#N ERROR: …` is shown with its vertex's name,
# whatever the vertex; BuildKit's own bookkeeping (transfers, layers, `#0 building
# with …`) is not. Lines outside both (the error summary at the end, warnings) show.
set +e
"${build[@]}" 2>&1 | awk -v counts="$counts" '
    function show(line) { print line; fflush() }
    function head(id) {
        if (id != last) { show(name[id]); last = id }
    }
    { gsub(/\033\[[0-9;]*m/, ""); sub(/\r$/, "") }

    # ----- BuildKit (plain progress) -----
    /^#[0-9]+ / {
        id = substr($1, 2)
        rest = substr($0, length($1) + 2)
        if (id == 0) next
        if (!(id in name)) {
            name[id] = rest
            step[id] = (rest ~ /^\[[^]]*[0-9]+\/[0-9]+\] / && rest !~ /^\[[^]]*\] FROM /)
            next
        }
        if (rest == name[id]) next
        if (rest == "CACHED") { if (step[id] && !(id in done)) { done[id]; cached++ } next }
        if (rest ~ /^DONE /) {
            if (step[id] && !(id in done)) { done[id]; ran++; head(id) }
            next
        }
        if (rest ~ /^ERROR/) { head(id); show(rest); next }
        if (step[id] && rest ~ /^[0-9]+\.[0-9]+ /) { head(id); sub(/^[0-9.]+ /, "", rest); show(rest); next }
        next
    }

    # ----- legacy builder -----
    # The CLI notice that the legacy builder is deprecated.
    /^DEPRECATED: The legacy builder/ { notice = 1; next }
    notice && /^ / { next }
    notice && /^$/ { notice = 0; next }
    /^Step [0-9]+\/[0-9]+ : / { header = $0; from = ($4 == "FROM"); pending = 1; next }
    pending && /^ ---> Using cache/ { pending = 0; cached++; next }
    pending && !from { pending = 0; ran++; show(header) }
    /^ ---> / { next }
    /^Removing intermediate container/ { next }
    /^Successfully (tagged|built)/ { next }
    /^Sending build context/ { next }
    /^$/ { next }
    # Anything else (what a step prints, a pull, a warning, an error) is shown; a FROM
    # step that prints something is named first.
    pending && from { pending = 0; show(header) }
    { show($0) }
    END { print (ran + 0), (cached + 0) > counts }
'
statuses=("${PIPESTATUS[@]}")
set -e

if [ "${statuses[0]}" = 0 ] && [ "${statuses[1]}" = 0 ]; then
    read -r ran cached <"$counts"
    if [ "$ran" = 0 ]; then
        echo "$tag: up to date ($cached steps from the cache)"
    else
        echo "$tag: built ($ran steps ran, $cached from the cache)"
    fi
    exit 0
fi
echo "docker build of $tag ($dockerfile) failed (exit code ${statuses[0]}): its output" \
    "is above (VERBOSE=1 shows every step)" >&2
exit 1
