#!/usr/bin/env bash
# edgefold's runtime proven on aarch64 without a board: the README's "Benchmark on an ARM device" steps, word for
# word, with the device's part run in an arm64 Debian chroot under qemu-user (benchmarks/arm_chroot.sh).
#   1. on this x86 machine: the README's workstation block (export MiniLM unchanged and compressed, pack both)
#   2. in the chroot: the README's device block (unpack, venv, pip install, validate, bench), EDGEFOLD_EMULATED=1
#   3. the same graphs' raw outputs on x86 and aarch64 must agree within 1e-4; the bench JSON must be well formed
#      and labelled emulated; then the README's report block on this machine.
# Results: benchmarks/results/arm_emulated.{md,json}. Exit 3 (and one line saying why) where the machine cannot
# run it; exit 1 on a mismatch. Env: EDGEFOLD_ARM_ROOT (the chroot, kept as a cache; default
# ~/.cache/edgefold/arm64-bookworm), EDGEFOLD_ARM_WORK (scratch folder), EDGEFOLD_VENV (host venv with the
# exporter; default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=$(cd "${EDGEFOLD_VENV:-.venv}" && pwd)
CHROOT=$REPO/benchmarks/arm_chroot.sh
WORK=${EDGEFOLD_ARM_WORK:-$(mktemp -d /tmp/edgefold-arm.XXXXXX)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! reason=$("$CHROOT" check); then
    echo "ARM emulated run skipped: $reason"
    exit 3
fi
readme_block() {  # the fenced block after <!-- arm: NAME --> in README.md
    awk -v tag="<!-- arm: $1 -->" '$0 == tag {on = 1; next} on && /^```/ {if (inside) exit; inside = 1; next}
                                   on && inside {print}' "$REPO/README.md"
}
start=$SECONDS
mkdir -p "$WORK/workstation"
echo "ARM emulated run in $WORK"
had_chroot=$([ -f "$("$CHROOT" root)/.edgefold-ready" ] && echo true || echo false)
"$CHROOT" build > "$WORK/chroot.log" 2>&1 & build=$!   # emulated and single-threaded: overlaps the exports

cd "$WORK/workstation"
readme_block workstation > workstation.sh
echo "--- workstation (x86), from README.md:"; cat workstation.sh
PATH="$VENV/bin:$PATH" bash -euo pipefail workstation.sh
"$VENV/bin/python" "$REPO/benchmarks/arm_outputs.py" dump x86 minilm-ref minilm-svd
"$VENV/bin/edgefold" validate minilm-svd --reference minilm-ref --limit 8 --gate "mean_cosine>=0" \
    -o x86-validate.json > /dev/null
host_done=$((SECONDS - start))

wait $build || { cat "$WORK/chroot.log"; echo "ARM emulated run failed: the chroot did not build"; exit 1; }
cat "$WORK/chroot.log"
chroot_done=$((SECONDS - start))
ROOT=$("$CHROOT" root)
rm -rf "$ROOT/root/device"; mkdir -p "$ROOT/root/device"
cp ./*.tar.gz "$REPO/benchmarks/arm_outputs.py" "$ROOT/root/device/"
readme_block device > "$ROOT/root/device/device.sh"
echo "--- device (aarch64, emulated), from README.md:"; cat "$ROOT/root/device/device.sh"
device_start=$SECONDS
"$CHROOT" run "cd device && bash -euo pipefail device.sh && uname -m > arch.txt && .venv/bin/pip list --format=freeze > freeze.txt && .venv/bin/python arm_outputs.py dump arm minilm-ref minilm-svd" \
    2> >(grep -v -e "cpuinfo" -e "cpuid_info" >&2)
device_s=$((SECONDS - device_start))
cp "$ROOT"/root/device/{*.json,*.npz,arch.txt,freeze.txt} .

readme_block report > report.sh
echo "--- workstation (x86), from README.md:"; cat report.sh
PATH="$VENV/bin:$PATH" bash -euo pipefail report.sh
"$VENV/bin/python" "$REPO/benchmarks/arm_outputs.py" summarize . "$REPO/benchmarks/results/arm_emulated" \
    --timing "total_s=$((SECONDS - start))" --timing "host_exports_s=$host_done" \
    --timing "chroot_ready_s=$chroot_done" --timing "device_steps_s=$device_s" --timing "chroot_cached=$had_chroot"
