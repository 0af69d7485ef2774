#!/usr/bin/env bash
# An arm64 Debian (bookworm) chroot run by qemu-user-static, for proving the runtime on aarch64 without a board.
#   benchmarks/arm_chroot.sh check          exit 0 if this machine can build and run it, else print why (exit 3)
#   benchmarks/arm_chroot.sh build          build it once under $EDGEFOLD_ARM_ROOT (kept as a cache)
#   benchmarks/arm_chroot.sh run CMD...     run CMD (bash -c) inside it, in /root, /proc and /dev mounted
# Needs root, a mountable binfmt_misc and apt/PyPI reachable. /sys is never mounted: importing onnxruntime
# then segfaults under qemu. Inside: EDGEFOLD_EMULATED=1 (timings labelled emulated) and PIP_NO_COMPILE=1
# (byte-compiling numpy and onnxruntime under emulation costs a minute, and changes nothing a command does).
set -euo pipefail
ROOT="${EDGEFOLD_ARM_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefold/arm64-bookworm}"
MIRROR="${EDGEFOLD_ARM_MIRROR:-http://deb.debian.org/debian}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

why_not() {  # prints the first reason this machine cannot run the chroot, or nothing
    [ "$(id -u)" = 0 ] || { echo "not root (debootstrap, chroot and binfmt_misc need it)"; return; }
    [ "$(uname -m)" = x86_64 ] || { echo "the host is $(uname -m), not x86_64"; return; }
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || { echo "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (a container without the privilege?)"; return; }
    fi
    command -v apt-get >/dev/null || { echo "no apt-get to install qemu-user-static and debootstrap"; return; }
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap; } \
            >/dev/null 2>&1 || { echo "apt-get cannot install qemu-user-static and debootstrap (no mirror reachable?)"; return; }
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] || { echo "qemu-user-static has no binfmt entry for aarch64"; return; }
        cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register 2>/dev/null \
            || { echo "cannot register qemu-aarch64 with binfmt_misc"; return; }
    fi
    return 0
}

build() {
    [ -f "$ROOT/.edgefold-ready" ] && { echo "arm64 chroot: cached at $ROOT"; return; }
    local start=$SECONDS staging="$ROOT.staging"
    rm -rf "$staging"; mkdir -p "$(dirname "$ROOT")"
    echo "arm64 chroot: debootstrap bookworm into $staging (first stage)"
    # python3-venv comes in the first stage: a separate apt-get update and install, emulated, costs minutes.
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3-venv bookworm "$staging" "$MIRROR" \
        >"$staging.log" 2>&1 \
        || { tail -20 "$staging.log"; exit 1; }
    echo "arm64 chroot: second stage (emulated)"
    chroot "$staging" /debootstrap/debootstrap --second-stage >>"$staging.log" 2>&1 \
        || { tail -20 "$staging.log"; exit 1; }
    # The host's CA bundle: pip inside must trust what the host trusts (a proxy's CA included).
    mkdir -p "$staging/etc/edgefold"; cp "$HOST_CA" "$staging/etc/edgefold/ca.crt"
    cp /etc/resolv.conf "$staging/etc/resolv.conf"
    with_mounts "$staging" 'python3 -m venv /tmp/probe && /tmp/probe/bin/pip --version && rm -rf /tmp/probe' \
        >>"$staging.log" 2>&1 || { tail -20 "$staging.log"; echo "arm64 chroot: python3 -m venv does not work"; exit 1; }
    touch "$staging/.edgefold-ready"
    rm -rf "$ROOT"; mv "$staging" "$ROOT"; mv "$staging.log" "$ROOT.log"
    echo "arm64 chroot: built in $((SECONDS - start)) s"
}

with_mounts() {  # ROOT CMD: run CMD in ROOT with /proc and /dev, unmounting them whatever happens
    local root=$1 code=0; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        PIP_CERT=/etc/edgefold/ca.crt SSL_CERT_FILE=/etc/edgefold/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_NO_COMPILE=1 EDGEFOLD_EMULATED=1 /bin/bash -c "cd /root && $*" || code=$?
    umount -R "$root/dev" || umount -l "$root/dev"
    umount "$root/proc" || umount -l "$root/proc"
    return $code
}

case "${1:-}" in
    check) reason=$(why_not); [ -z "$reason" ] || { echo "$reason"; exit 3; } ;;
    build) reason=$(why_not); [ -z "$reason" ] || { echo "cannot build the arm64 chroot: $reason"; exit 3; }; build ;;
    run) shift; with_mounts "$ROOT" "$*" ;;
    root) echo "$ROOT" ;;
    *) echo "usage: $0 check|build|run CMD...|root" >&2; exit 2 ;;
esac
