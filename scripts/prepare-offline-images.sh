#!/usr/bin/env bash
# Makes the base images our Dockerfiles and nc_test.sh use exist in a Docker engine
# that has no image registry, so the standard Dockerfiles build unchanged:
#
#   debian:bookworm-slim      runtime stage   <- debootstrap minbase, slimmed
#   rust:1.95-slim-bookworm   builder stage   <- debootstrap + gcc + the HOST's 1.95.0
#                                                toolchain + vendored crates
#   busybox:1.35              nc_test.sh      <- Debian's busybox-static, tiny rootfs
#
# Why: on a machine without an image registry `docker pull` and `FROM <remote>` fail,
# and a build container may not reach crates.io (no network, or an HTTPS proxy whose
# CA only the host trusts). So the rust
# stand-in carries this project's crate sources (`cargo vendor --locked`, run on the
# host) in /usr/local/cargo/vendor, and its /usr/local/cargo/config.toml points
# crates.io at them: `cargo build --locked` in a container then works offline.
#
#   scripts/prepare-offline-images.sh [--force] [--help]
#
# Idempotent: an image already there is left alone (~1 s when all are present).
# Per tag:
#   * a real image (no label local.offline-standin=true) is NEVER replaced or deleted;
#   * a missing image is first pulled (machines with a registry get the real thing);
#     if the pull fails, a stand-in is built from local material;
#   * the rust stand-in is labelled with the sha256 of Cargo.lock; when Cargo.lock
#     changes only its thin vendor layer is rebuilt, on top of the heavy toolchain
#     image kept as local/rust-toolchain-standin:1.95-bookworm (~20 s).
# --force rebuilds every stand-in (real images are still kept).
#
# Environment: PREPARE_IMAGES_PULL=0 skips the pull attempts; PREPARE_IMAGES_PULL_TIMEOUT
# bounds each one (seconds, default 300; with no registry at all a pull fails at once). DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Needs: root, a running Docker engine, rustup with toolchain 1.95.0, apt (installs
# debootstrap if missing), network from the host to the Debian mirror and crates.io.
set -Eeuo pipefail

# ---- what to provide ---------------------------------------------------------------
RUST_VERSION=1.95.0                                     # host toolchain copied in
DEBIAN_TAG=debian:bookworm-slim
RUST_TAG=rust:1.95-slim-bookworm
BUSYBOX_TAG=busybox:1.35
TOOLCHAIN_TAG=local/rust-toolchain-standin:1.95-bookworm  # heavy part of RUST_TAG
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Bump when the way stand-ins are made changes: stand-ins with another value are rebuilt.
RECIPE=1

PULL=${PREPARE_IMAGES_PULL:-1}
PULL_TIMEOUT=${PREPARE_IMAGES_PULL_TIMEOUT:-300}
PROJECT_DIR=$(cd "$(dirname "$0")/.." && pwd)
LOCK_FILE=$PROJECT_DIR/Cargo.lock
STANDIN_LABEL=local.offline-standin
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PROXIES=(cargo cargo-clippy cargo-fmt cargo-miri clippy-driver rls rust-analyzer
         rust-gdb rust-gdbgui rust-lldb rustc rustdoc rustfmt)  # rustup's proxy names

usage() { sed -n '2,/^set -E/{/^set -E/d;s/^# \{0,1\}//;p}' "$0"; }

FORCE=0
for arg in "$@"; do
    case $arg in
        -h|--help) usage; exit 0 ;;
        --force) FORCE=1 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "prepare-offline-images: error: $*" >&2; exit 1; }
trap 'echo "prepare-offline-images: failed (line $LINENO: $BASH_COMMAND)" >&2' ERR
# One line per image: "TAG  what happened".
report() { printf '%-44s %s\n' "$1" "$2"; }

# ---- scratch space, removed on exit (also on failure) -------------------------------
WORK="" CONTAINER=""
cleanup() {
    [ -z "$CONTAINER" ] || docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    [ -n "$WORK" ] && [ -d "$WORK" ] || return 0
    # debootstrap mounts /proc and /sys in its target; a failed run may leave them.
    findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'echo "prepare-offline-images: interrupted" >&2; exit 130' INT   # cleanup runs too
trap 'echo "prepare-offline-images: terminated" >&2; exit 143' TERM
work() {  # lazily, so the warm path creates nothing
    [ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/prepare-offline-images.XXXXXX")
}

# Serialise concurrent runs (make -j, several make targets at once), where flock exists.
if command -v flock >/dev/null; then
    exec 9>>"${TMPDIR:-/tmp}/prepare-offline-images.lock"
    flock -w 3600 9 || die "another run holds ${TMPDIR:-/tmp}/prepare-offline-images.lock"
fi

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "cannot talk to the Docker engine (is it running? are we root?)"

# ---- helpers -------------------------------------------------------------------------
# labels TAG -> "standin|recipe|lock-sha|toolchain-id|image-id", or nothing if absent.
# (`index` on an image without labels is a template error, hence the `with`s; any
# inspect failure other than "no such image" stops us rather than counting as absent.)
LABELS_FMT="{{with .Config}}{{with .Labels}}{{index . \"$STANDIN_LABEL\"}}|{{index . \"local.standin-recipe\"}}|{{index . \"local.cargo-lock-sha256\"}}|{{index . \"local.toolchain-image\"}}{{else}}|||{{end}}{{else}}|||{{end}}|{{.Id}}"
labels() {
    local out
    if out=$(docker image inspect -f "$LABELS_FMT" "$1" 2>&1); then
        echo "${out//<no value>/}"   # a missing key prints "<no value>"
    elif [[ $out != *[Nn]"o such image"* ]]; then
        die "docker image inspect $1: $out"
    fi
}

# try_pull TAG: 0 if the real image could be pulled; else says why not, and 1.
try_pull() {
    local out
    [ "$PULL" = 1 ] || return 1
    if out=$(timeout "$PULL_TIMEOUT" docker pull -q "$1" 2>&1); then
        return 0
    fi
    out=${out//$'\n'/ }
    [ -n "$out" ] || out="no answer in $PULL_TIMEOUT s"
    report "$1" "cannot be pulled (${out:0:160}); building a stand-in"
    return 1
}

# A stand-in we replaced is left untagged: remove it (only if it is one of ours and
# nothing uses it; images built FROM it keep it alive, which is fine).
remove_old() {
    local id=$1 info
    [ -n "$id" ] || return 0
    info=$(docker image inspect -f "{{len .RepoTags}}|{{index .Config.Labels \"$STANDIN_LABEL\"}}" "$id" 2>/dev/null) || return 0
    [ "$info" = "0|true" ] || return 0
    docker rmi "$id" >/dev/null 2>&1 || echo "  (old stand-in ${id:7:12} still used by other images; left)"
}

require_root() { [ "$(id -u)" = 0 ] || die "building stand-ins needs root (debootstrap)"; }

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    apt-get update -qq >"$WORK/apt-update.log" 2>&1 \
        || { tail -20 "$WORK/apt-update.log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
}

# apt_retry CMD...: run an apt command; if it fails, refresh the lists and retry once.
apt_retry() {
    "$@" >"$WORK/apt.log" 2>&1 && return 0
    apt_update_once
    "$@" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; die "apt failed: $*"; }
}

# debootstrap_rootfs DIR PACKAGES: a minimal Debian rootfs slimmed like the official
# slim images, with apt/dpkg configured as in them.
debootstrap_rootfs() {
    local root=$1 include=$2 log
    log="$WORK/debootstrap-$(basename "$root").log"
    # The archive keyring makes debootstrap check the packages' signatures (it only
    # warns without one, and the mirror is plain HTTP).
    if ! command -v debootstrap >/dev/null || [ ! -f "$KEYRING" ]; then
        apt_retry env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends debootstrap debian-archive-keyring
    fi
    debootstrap --variant=minbase --keyring="$KEYRING" --include="$include" \
        "$SUITE" "$root" "$MIRROR" >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "debootstrap $SUITE from $MIRROR failed (log above)"; }

    # Keep packages installed later slim too (what debian:*-slim ships).
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"   # no daemons start in builds
    chmod 755 "$root/usr/sbin/policy-rc.d"
    # Same apt sources as the official image.
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    # Slim: docs (but copyrights), man, info, locales (but locale.alias), caches, logs.
    find "$root/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
    rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/debconf/*-old \
        "$root"/var/lib/dpkg/*-old "$root"/var/log/*.log "$root"/var/log/apt/* \
        "${root:?}"/dev/* "$root"/tmp/* "$root"/var/tmp/*
    mkdir -p "$root/var/lib/apt/lists/partial"
    # Docker bind-mounts its own; do not bake the host's in.
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
}

# import_rootfs DIR TAG CMD [extra --change ...]: tar DIR into an image with our labels.
import_rootfs() {
    local root=$1 tag=$2 cmd=$3; shift 3
    tar --numeric-owner -C "$root" -c . | docker import \
        --message "offline stand-in for $tag (scripts/prepare-offline-images.sh)" \
        --change "CMD $cmd" \
        --change "LABEL $STANDIN_LABEL=true local.standin-recipe=$RECIPE" \
        "$@" - "$tag" >/dev/null
}

# ensure_simple TAG BUILD: TAG is there (a real image, or a current stand-in), or is
# pulled, or BUILD makes a stand-in under TAG (as root, with $WORK available).
ensure_simple() {
    local tag=$1 build=$2 l t0=$SECONDS old="" standin recipe
    l=$(labels "$tag")
    if [ -n "$l" ]; then
        IFS='|' read -r standin recipe _ _ old <<<"$l"
        [ "$standin" = true ] || { report "$tag" "real image kept"; return; }
        if [ "$recipe" = "$RECIPE" ] && [ "$FORCE" = 0 ]; then
            report "$tag" "already present (stand-in)"; return
        fi
    fi
    if [ -z "$l" ] && try_pull "$tag"; then
        report "$tag" "pulled real image in $((SECONDS - t0)) s"; return
    fi
    require_root; work
    "$build"
    remove_old "$old"
    report "$tag" "built stand-in in $((SECONDS - t0)) s"
}

# ---- debian:bookworm-slim --------------------------------------------------------------
build_debian() {
    # passwd: the runtime stage runs useradd, which the real slim image has.
    debootstrap_rootfs "$WORK/debian" passwd
    import_rootfs "$WORK/debian" "$DEBIAN_TAG" '["bash"]' --change "ENV PATH=$BASE_PATH"
    rm -rf --one-file-system "$WORK/debian"
    docker run --rm --network none "$DEBIAN_TAG" sh -c 'command -v useradd >/dev/null' \
        || die "$DEBIAN_TAG stand-in has no useradd"
}

# ---- busybox:1.35 ----------------------------------------------------------------------
build_busybox() {
    local root bb version applet
    mkdir -p "$WORK/bb/deb"
    (cd "$WORK/bb/deb" && apt_retry apt-get download busybox-static)
    dpkg-deb -x "$WORK"/bb/deb/busybox-static_*.deb "$WORK/bb/x"
    bb=$WORK/bb/x/bin/busybox
    # The tag promises a version: check it (the binary is static, it runs on the host).
    version=$({ "$bb" 2>&1 || true; } | sed -n '1s/^BusyBox v\([0-9.]*\).*/\1/p')
    [[ $version == "${BUSYBOX_TAG#*:}"* ]] \
        || die "this host's busybox-static package is $version, not ${BUSYBOX_TAG#*:}"
    # Layout of the official image: every applet in /bin, minimal /etc.
    root=$WORK/bb/root
    mkdir -p "$root"/{bin,dev,etc,home,proc,root,sys,tmp,usr/sbin,var/spool/mail,var/www}
    chmod 1777 "$root/tmp"; chmod 700 "$root/root"
    install -m 755 "$bb" "$root/bin/busybox"
    for applet in $("$bb" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'daemon:x:1:1:daemon:/usr/sbin:/bin/false' \
        'nobody:x:65534:65534:nobody:/home:/bin/false' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'daemon:x:1:' 'nogroup:x:65534:' >"$root/etc/group"
    : >"$root/etc/resolv.conf"; : >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n' >"$root/etc/hosts"
    import_rootfs "$root" "$BUSYBOX_TAG" '["sh"]' --change "ENV PATH=$BASE_PATH"
    rm -rf "$WORK/bb"
    # What nc_test.sh and the Docker tests use: timeout, nc as client and with -l -p.
    docker run --rm --network none "$BUSYBOX_TAG" sh -c \
        "command -v timeout >/dev/null && nc -h 2>&1 | grep -q -- '-l' && nc -h 2>&1 | grep -q -- '-p PORT'" \
        || die "$BUSYBOX_TAG stand-in: no timeout, or busybox nc lacks -l / -p"
}

# ---- rust:1.95-slim-bookworm -------------------------------------------------------------
# Host toolchain facts; dies with a clear message if the toolchain is missing.
SYSROOT="" TRIPLE=""
host_toolchain() {
    [ -n "$SYSROOT" ] && return 0
    command -v rustup >/dev/null || die "rustup not found (needed to copy toolchain $RUST_VERSION)"
    local v
    v=$(rustup run "$RUST_VERSION" rustc -vV 2>/dev/null) \
        || die "host toolchain $RUST_VERSION missing: rustup toolchain install $RUST_VERSION"
    [[ $v == "rustc $RUST_VERSION "* ]] || die "toolchain $RUST_VERSION reports: ${v%%$'\n'*}"
    TRIPLE=$(sed -n 's/^host: //p' <<<"$v")
    SYSROOT=$(rustup run "$RUST_VERSION" rustc --print sysroot)
}

# The heavy part: Debian + gcc + toolchain laid out like the official image
# (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, rustup proxies).
build_toolchain() {
    local root tc rustup_bin settings_version
    require_root; work; host_toolchain
    root=$WORK/rust
    debootstrap_rootfs "$root" passwd,ca-certificates,gcc,libc6-dev
    tc=$root/usr/local/rustup/toolchains/$RUST_VERSION-$TRIPLE
    mkdir -p "$tc" "$root/usr/local/cargo/bin"
    tar -C "$SYSROOT" --exclude=./share/doc -c . | tar -C "$tc" -x
    # The docs are not there (the official image has the minimal profile): do not list them.
    sed -i '/^rust-docs$/d' "$tc/lib/rustlib/components"
    rm -f "$tc"/lib/rustlib/manifest-rust-docs-*
    rustup_bin=$(readlink -f "$(command -v rustup)")
    install -m 755 "$rustup_bin" "$root/usr/local/cargo/bin/rustup"
    for p in "${PROXIES[@]}"; do ln -s rustup "$root/usr/local/cargo/bin/$p"; done
    # Same settings format as the host's rustup writes.
    settings_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "${RUSTUP_HOME:-$HOME/.rustup}/settings.toml" 2>/dev/null || true)
    cat >"$root/usr/local/rustup/settings.toml" <<EOF
version = "${settings_version:-12}"
default_toolchain = "$RUST_VERSION-$TRIPLE"
profile = "minimal"

[overrides]
EOF
    chmod -R a+w "$root/usr/local/rustup" "$root/usr/local/cargo"
    import_rootfs "$root" "$TOOLCHAIN_TAG" '["bash"]' \
        --change "ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$RUST_VERSION" \
        --change "ENV PATH=/usr/local/cargo/bin:$BASE_PATH"
    rm -rf --one-file-system "$root"
}

# The thin part: this project's vendored crates + cargo config, on top of the toolchain
# image. One `docker cp` + `docker commit` rather than a Dockerfile: on storage drivers
# with a naive diff (fuse-overlayfs, vfs) each commit walks the whole ~1 GB tree, so a
# legacy `docker build` of FROM/COPY/COPY/LABEL takes about twice as long.
build_vendor_layer() {
    local sha=$1 tcid=$2 ctx
    work; host_toolchain
    ctx=$WORK/cargo-home
    mkdir -p "$ctx"
    rustup run "$RUST_VERSION" cargo vendor --locked --quiet \
        --manifest-path "$PROJECT_DIR/Cargo.toml" "$ctx/vendor" >/dev/null 2>"$WORK/vendor.log" \
        || { tail -20 "$WORK/vendor.log" >&2; die "cargo vendor --locked failed for $PROJECT_DIR"; }
    cat >"$ctx/config.toml" <<'EOF2'
# Crate sources baked in by scripts/prepare-offline-images.sh (crates.io may not be
# reachable from build containers).
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/usr/local/cargo/vendor"
EOF2
    CONTAINER=$(docker create "$tcid")
    docker cp "$ctx/." "$CONTAINER:/usr/local/cargo/"
    docker commit --change "LABEL local.cargo-lock-sha256=$sha local.toolchain-image=$tcid" \
        --message "vendored crates for Cargo.lock $sha" "$CONTAINER" "$RUST_TAG" >/dev/null
    docker rm "$CONTAINER" >/dev/null
    CONTAINER=""
    rm -rf "$ctx"
}

ensure_rust() {
    local t0=$SECONDS l tl sha old="" standin="" recipe="" lock="" tc_label=""
    local tcid="" tc_standin="" tc_recipe="" tc_old="" why="" tc_msg="" t1
    sha=$(sha256sum "$LOCK_FILE" 2>/dev/null | cut -d' ' -f1) || true
    [ -n "$sha" ] || die "cannot read $LOCK_FILE"
    l=$(labels "$RUST_TAG")
    tl=$(labels "$TOOLCHAIN_TAG")
    [ -z "$tl" ] || IFS='|' read -r tc_standin tc_recipe _ _ tcid <<<"$tl"
    if [ -n "$tl" ] && [ "$tc_standin" != true ]; then
        die "$TOOLCHAIN_TAG exists but is not a stand-in; remove or rename it"
    fi
    if [ -n "$l" ]; then
        IFS='|' read -r standin recipe lock tc_label old <<<"$l"
        [ "$standin" = true ] || { report "$RUST_TAG" "real image kept"; return; }
        # Toolchain tag removed? Its image lives on as the stand-in's base: re-tag it.
        if [ -z "$tcid" ] && [ -n "$tc_label" ] && docker tag "$tc_label" "$TOOLCHAIN_TAG" 2>/dev/null; then
            tcid=$tc_label tc_recipe=$recipe
        fi
        if [ "$FORCE" = 1 ]; then why="--force"
        elif [ "$recipe" != "$RECIPE" ]; then why="new recipe"
        elif [ "$tc_label" != "$tcid" ]; then why="toolchain image changed"
        elif [ "$lock" != "$sha" ]; then why="Cargo.lock changed"
        else report "$RUST_TAG" "already present (stand-in, Cargo.lock ${sha:0:12})"; return
        fi
    elif try_pull "$RUST_TAG"; then
        report "$RUST_TAG" "pulled real image in $((SECONDS - t0)) s"; return
    fi

    # The toolchain image is reused unless missing, outdated or --force.
    if [ -z "$tcid" ] || [ "$tc_recipe" != "$RECIPE" ] || [ "$FORCE" = 1 ]; then
        t1=$SECONDS tc_old=$tcid
        build_toolchain
        tcid=$(docker image inspect -f '{{.Id}}' "$TOOLCHAIN_TAG")
        tc_msg="toolchain $((SECONDS - t1)) s + "
    fi
    t1=$SECONDS
    build_vendor_layer "$sha" "$tcid"
    docker run --rm --network none "$RUST_TAG" cargo --version >/dev/null \
        || die "$RUST_TAG stand-in: cargo does not run"
    remove_old "$old"
    remove_old "$tc_old"
    report "$RUST_TAG" "built stand-in in $((SECONDS - t0)) s (${tc_msg}vendor layer $((SECONDS - t1)) s${why:+; $why})"
}

ensure_simple "$DEBIAN_TAG" build_debian
ensure_simple "$BUSYBOX_TAG" build_busybox
ensure_rust
