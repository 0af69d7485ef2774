#!/usr/bin/env bash
# An arm64 Debian (bookworm) chroot run by qemu-user-static, for proving the runtime on aarch64 without a board.
#   benchmarks/arm_chroot.sh check          exit 0 if this machine can build and run it, else print why (exit 3)
#   benchmarks/arm_chroot.sh build          build it once under $EDGEFOLD_ARM_ROOT (kept as a cache)
#   benchmarks/arm_chroot.sh run CMD...     run CMD (bash -c) inside it, in /root, /proc and /dev mounted
#   benchmarks/arm_chroot.sh sshd PORT AUTHORIZED_KEYS [PIDFILE]
#                                           build if needed, start the chroot's own sshd on 127.0.0.1:PORT in
#                                           the background (root, key login only), print its host key line
#                                           ("ssh-ed25519 AAAA...") on stdout; PIDFILE defaults to $ROOT.sshd-PORT.pid
#   benchmarks/arm_chroot.sh sshd-stop PIDFILE   stop that sshd, unmount the /proc and /dev it mounted
# Needs root, a mountable binfmt_misc and apt/PyPI reachable. /sys is never mounted: importing onnxruntime
# then segfaults under qemu. Inside: EDGEFOLD_EMULATED=1 (timings labelled emulated) and PIP_NO_COMPILE=1
# (byte-compiling numpy and onnxruntime under emulation costs a minute, and changes nothing a command does);
# ssh sessions get the same through sshd's SetEnv.
set -euo pipefail
ROOT="${EDGEFOLD_ARM_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefold/arm64-bookworm}"
MIRROR="${EDGEFOLD_ARM_MIRROR:-http://deb.debian.org/debian}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# The marker's content says what the chroot holds: a cached chroot with other content is stale and upgraded.
VERSION="2 python3-venv openssh-server"
ENV_VARS="LANG=C.UTF-8 PIP_CERT=/etc/edgefold/ca.crt SSL_CERT_FILE=/etc/edgefold/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_COMPILE=1 EDGEFOLD_EMULATED=1"

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

ready() { [ "$(cat "$ROOT/.edgefold-ready" 2>/dev/null)" = "$VERSION" ]; }

upgrade() {  # a chroot cached by an older version of this script: apt-get what it lacks, in place
    local start=$SECONDS
    echo "arm64 chroot: upgrading $ROOT in place (apt-get install openssh-server, emulated)"
    # policy-rc.d 101: the package's postinst must not start an sshd on port 22 of the host's network.
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    local code=0
    with_mounts "$ROOT" 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends openssh-server && apt-get clean' >>"$ROOT.log" 2>&1 || code=$?
    rm -f "$ROOT/usr/sbin/policy-rc.d"
    [ $code = 0 ] || { tail -20 "$ROOT.log"; return 1; }
    echo "$VERSION" > "$ROOT/.edgefold-ready"
    echo "arm64 chroot: upgraded in $((SECONDS - start)) s"
}

remove_tree() {  # DIR: unmount whatever is mounted under DIR, deepest first, then delete DIR
    # A build killed mid-way leaves debootstrap's /proc and /sys (or our /proc and /dev) mounted inside: removing
    # through them fails, or worse, deletes the host's /dev. --one-file-system is the second guard.
    [ -e "$1" ] || return 0
    local dir m
    dir=$(realpath "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r |
        while IFS= read -r m; do umount -R "$m" 2>/dev/null || umount -l "$m"; done
    rm -rf --one-file-system "$dir"
}

build() {
    ready && { echo "arm64 chroot: cached at $ROOT"; return; }
    [ -f "$ROOT/.edgefold-ready" ] && { upgrade && return; echo "arm64 chroot: upgrade failed, rebuilding"; }
    local start=$SECONDS staging="$ROOT.staging"
    remove_tree "$staging"; mkdir -p "$(dirname "$ROOT")"
    echo "arm64 chroot: debootstrap bookworm into $staging (first stage)"
    # python3-venv and openssh-server come in the first stage: a separate apt-get update and install, emulated,
    # costs minutes (debootstrap's own policy-rc.d keeps the postinst from starting sshd).
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3-venv,openssh-server bookworm "$staging" \
        "$MIRROR" >"$staging.log" 2>&1 \
        || { tail -20 "$staging.log"; exit 1; }
    echo "arm64 chroot: second stage (emulated)"
    chroot "$staging" /debootstrap/debootstrap --second-stage >>"$staging.log" 2>&1 \
        || { tail -20 "$staging.log"; exit 1; }
    # The host's CA bundle: pip inside must trust what the host trusts (a proxy's CA included).
    mkdir -p "$staging/etc/edgefold"; cp "$HOST_CA" "$staging/etc/edgefold/ca.crt"
    cp /etc/resolv.conf "$staging/etc/resolv.conf"
    with_mounts "$staging" 'python3 -m venv /tmp/probe && /tmp/probe/bin/pip --version && rm -rf /tmp/probe' \
        >>"$staging.log" 2>&1 || { tail -20 "$staging.log"; echo "arm64 chroot: python3 -m venv does not work"; exit 1; }
    echo "$VERSION" > "$staging/.edgefold-ready"
    remove_tree "$ROOT"; mv "$staging" "$ROOT"; mv "$staging.log" "$ROOT.log"
    echo "arm64 chroot: built in $((SECONDS - start)) s"
}

mount_in() {  # ROOT: /proc and /dev inside ROOT (never /sys)
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"; mount --make-rslave "$1/dev"
}

umount_in() {  # ROOT: undo mount_in
    umount -R "$1/dev" || umount -l "$1/dev"
    umount "$1/proc" || umount -l "$1/proc"
}

with_mounts() {  # ROOT CMD: run CMD in ROOT with /proc and /dev, unmounting them whatever happens
    local root=$1 code=0; shift
    mount_in "$root"
    # shellcheck disable=SC2086  # ENV_VARS is a list of words
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin $ENV_VARS \
        /bin/bash -c "cd /root && $*" || code=$?
    umount_in "$root"
    return $code
}

taken() {  # PORT: something accepts connections on 127.0.0.1:PORT
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    exec 3<&-
}

listening() {  # PORT: something on 127.0.0.1:PORT answers like an ssh server
    local banner=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    read -r -t 5 banner <&3 || true
    exec 3<&-
    [[ $banner == SSH-* ]]
}

start_sshd() {  # PORT AUTHORIZED_KEYS PIDFILE
    local port=$1 keys=$2 pidfile=$3 etc="$ROOT/etc/edgefold" start=$SECONDS
    [[ $port =~ ^[0-9]+$ ]] || { echo "sshd: PORT must be a number, not $port" >&2; exit 2; }
    [ -s "$keys" ] || { echo "sshd: no authorized keys in $keys" >&2; exit 2; }
    taken "$port" && { echo "sshd: 127.0.0.1:$port is already taken" >&2; exit 1; }
    build >&2   # stdout carries the host key line only
    mkdir -p "$etc"
    # Its own host key, made inside (the chroot's ssh-keygen): the host's keys are never shared with it.
    [ -f "$etc/ssh_host_ed25519_key" ] \
        || chroot "$ROOT" /usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/edgefold/ssh_host_ed25519_key
    install -m 600 "$keys" "$etc/authorized_keys-$port"
    # SetEnv gives sessions what with_mounts gives commands. UsePAM no: the chroot has no PAM set-up to speak
    # of; StrictModes no: the chroot is a cache folder, not a user's home whose modes need guarding.
    cat > "$etc/sshd_config-$port" <<CONF
ListenAddress 127.0.0.1:$port
HostKey /etc/edgefold/ssh_host_ed25519_key
AuthorizedKeysFile /etc/edgefold/authorized_keys-$port
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PidFile none
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv $ENV_VARS
CONF
    mkdir -p "$ROOT/run/sshd"; chmod 755 "$ROOT/run/sshd"   # sshd's privilege separation directory
    chroot "$ROOT" /usr/sbin/sshd -t -f "/etc/edgefold/sshd_config-$port" >&2 || exit 1
    mount_in "$ROOT"
    # -D in a background session of its own: its pid is the one in PIDFILE, and it outlives this script.
    setsid chroot "$ROOT" /usr/sbin/sshd -D -f "/etc/edgefold/sshd_config-$port" -E "/var/log/edgefold-sshd-$port.log" \
        </dev/null >/dev/null 2>&1 &
    local pid=$!
    echo "$pid $(realpath "$ROOT")" > "$pidfile"
    until listening "$port"; do
        if ! kill -0 "$pid" 2>/dev/null || [ $((SECONDS - start)) -gt 120 ]; then
            kill "$pid" 2>/dev/null || true; umount_in "$ROOT"; rm -f "$pidfile"
            tail -5 "$ROOT/var/log/edgefold-sshd-$port.log" >&2 2>/dev/null || true
            echo "sshd: did not come up on 127.0.0.1:$port" >&2; exit 1
        fi
        sleep 0.2
    done
    echo "arm64 chroot: sshd (pid $pid) on 127.0.0.1:$port in $((SECONDS - start)) s; stop: $0 sshd-stop $pidfile" >&2
    cut -d' ' -f1,2 "$etc/ssh_host_ed25519_key.pub"
}

tree() {  # PID...: those processes and all their descendants
    local p
    for p in "$@"; do
        echo "$p"
        # shellcheck disable=SC2046  # one pid a word
        tree $(ps -o pid= --ppid "$p")
    done
}

any_alive() {  # PID...
    local p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

stop_sshd() {  # PIDFILE
    local pid root pids
    read -r pid root < "$1" || { echo "sshd-stop: cannot read $1" >&2; exit 2; }
    # The listener and the sessions it forked: open sessions would hold the mounts (and outlive the listener).
    pids=$(tree "$pid")
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    for _ in $(seq 50); do any_alive $pids || break; sleep 0.1; done
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    umount_in "$root"
    rm -f "$1"
}

case "${1:-}" in
    check) reason=$(why_not); [ -z "$reason" ] || { echo "$reason"; exit 3; } ;;
    build) reason=$(why_not); [ -z "$reason" ] || { echo "cannot build the arm64 chroot: $reason"; exit 3; }; build ;;
    run) shift; with_mounts "$ROOT" "$*" ;;
    root) echo "$ROOT" ;;
    sshd) [ $# -ge 3 ] || { echo "usage: $0 sshd PORT AUTHORIZED_KEYS [PIDFILE]" >&2; exit 2; }
          reason=$(why_not); [ -z "$reason" ] || { echo "cannot run the arm64 chroot: $reason" >&2; exit 3; }
          start_sshd "$2" "$3" "${4:-$ROOT.sshd-$2.pid}" ;;
    sshd-stop) [ $# -ge 2 ] || { echo "usage: $0 sshd-stop PIDFILE" >&2; exit 2; }; stop_sshd "$2" ;;
    *) echo "usage: $0 check|build|run CMD...|root|sshd PORT AUTHORIZED_KEYS [PIDFILE]|sshd-stop PIDFILE" >&2
       exit 2 ;;
esac
