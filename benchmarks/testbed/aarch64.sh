#!/bin/bash
# The Raspberry Pi route on a real aarch64 userland, under QEMU user emulation (root):
#   1. an arm64 Debian bookworm (Python 3.11, as Raspberry Pi OS) with debootstrap + qemu-user-static;
#   2. edgesplit's wheel installed in it with the [litert] extra, exactly as the README tells a Pi owner;
#   3. the raspberry-pi bundle's edge half run there on the real aarch64 ai-edge-litert wheel, and here
#      on x86 (XNNPACK, and TFLite's builtin kernels for scale), over the same images; the codes and the
#      cloud's answers to them compared (benchmarks/testbed/compare_codes.py).
# Usage: sudo benchmarks/testbed/aarch64.sh [WORK]   (default /var/tmp/edgesplit-aarch64; the userland is
# kept there and reused). Writes benchmarks/results/aarch64/{aarch64.log,codes.json}. Emulated timings
# mean nothing: what counts is that it installs and computes the same codes.
set -euo pipefail
case "${1:-}" in -*) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 2;; esac
WORK=${1:-/var/tmp/edgesplit-aarch64}
ROOTFS=$WORK/rootfs
REPO=$(cd "$(dirname "$0")/../.." && pwd)
RESULTS=$REPO/benchmarks/results/aarch64
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
IMAGES=200
if [ "$(id -u)" != 0 ]; then echo "error: needs root (binfmt_misc, debootstrap, chroot)" >&2; exit 2; fi
mkdir -p "$WORK" "$RESULTS"
exec > >(tee "$WORK/aarch64.log") 2>&1  # copied to $RESULTS when the run succeeds
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "host: $(uname -m), $(. /etc/os-release; echo "$PRETTY_NAME")"

step "qemu-user-static, debootstrap, binfmt-support"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  step "debootstrap arm64 bookworm (first stage here, second under QEMU)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
fi
step "userland: $(chroot "$ROOTFS" uname -m), $(chroot "$ROOTFS" python3 --version)"

step "x86: the wheel, the raspberry-pi bundle (int8 codec, CPU cloud) and the images"
rm -rf "$WORK/dist" "$WORK/bundle" && mkdir -p "$WORK/dist"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO"
"$PYTHON" -m edgesplit build-engines --target raspberry-pi --cloud cpu --split layer3 --codec int8 \
  --output "$WORK/bundle" --tar >/dev/null
cp "$REPO/calibration_data/"*.npz "$WORK/images.npz"
for kernels in xnnpack builtin; do
  "$PYTHON" "$REPO/benchmarks/testbed/edge_codes.py" --bundle "$WORK/bundle.tar" --source "$WORK/images.npz" \
    --limit $IMAGES --kernels $kernels --output "$WORK/codes-x86_64-$kernels.npz"
done

step "aarch64: a venv and the wheel with [litert], as the README says"
mkdir -p "$ROOTFS/work" && cp "$WORK"/dist/*.whl "$WORK/bundle.tar" "$WORK/images.npz" \
  "$REPO/benchmarks/testbed/edge_codes.py" "$ROOTFS/work/"
WHEEL=$(basename "$WORK"/dist/*.whl)
started=$(date +%s)
# this host reaches PyPI through a proxy whose CA only the host's bundle has: lend it to pip in the userland
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/work/host-ca.crt"
chroot "$ROOTFS" env -i PATH=/usr/bin:/bin PIP_CERT=/work/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
  sh -c "rm -rf /opt/edgesplit && python3 -m venv /opt/edgesplit && /opt/edgesplit/bin/pip install -q '/work/$WHEEL[litert]'"
step "installed in $(( $(date +%s) - started )) s: $(chroot "$ROOTFS" /opt/edgesplit/bin/pip list 2>/dev/null \
  | grep -iE '^(edgesplit|ai-edge-litert|numpy) ' | tr -s ' ' | paste -sd ';')"
chroot "$ROOTFS" /opt/edgesplit/bin/python -c "import torch" 2>/dev/null && { echo "torch got installed"; exit 1; }
step "aarch64: the edge half on ai-edge-litert"
# XNNPACK's cpuinfo reads the CPU list from /sys and the CPU from /proc/cpuinfo; the host's own describe an
# x86 CPU and crash it under QEMU, so the userland gets one Cortex-A72 core (a Raspberry Pi 4's) as plain files
mkdir -p "$ROOTFS/sys/devices/system/cpu"
echo 0 > "$ROOTFS/sys/devices/system/cpu/possible"
echo 0 > "$ROOTFS/sys/devices/system/cpu/present"
mountpoint -q "$ROOTFS/proc" || printf '%s\n' "processor	: 0" "BogoMIPS	: 108.00" \
  "Features	: fp asimd evtstrm crc32 cpuid" "CPU implementer	: 0x41" "CPU architecture: 8" \
  "CPU variant	: 0x0" "CPU part	: 0xd08" "CPU revision	: 3" > "$ROOTFS/proc/cpuinfo"  # a Pi 4's Cortex-A72
# QEMU's default "max" CPU (SVE2, SME, i8mm...) gave wrong XNNPACK int8 codes (top-1 12 %) where a
# Cortex-A72 (Pi 4), A76 (Pi 5) or Neoverse-N1 gave the x86 codes exactly: emulate the Pis' cores
for cpu in cortex-a72 cortex-a76; do
  QEMU_CPU=$cpu chroot "$ROOTFS" /opt/edgesplit/bin/python /work/edge_codes.py --bundle /work/bundle.tar \
    --source /work/images.npz --limit $IMAGES --output "/work/codes-aarch64-$cpu.npz"
  cp "$ROOTFS/work/codes-aarch64-$cpu.npz" "$WORK/"
done
step "compare"
"$PYTHON" "$REPO/benchmarks/testbed/compare_codes.py" --bundle "$WORK/bundle.tar" --source "$WORK/images.npz" \
  --output "$RESULTS/codes.json" "$WORK/codes-x86_64-xnnpack.npz" "$WORK/codes-aarch64-cortex-a72.npz" \
  "$WORK/codes-aarch64-cortex-a76.npz" --context "$WORK/codes-x86_64-builtin.npz"
step "done"
cp "$WORK/aarch64.log" "$RESULTS/aarch64.log"
