#!/bin/bash
# The Raspberry Pi route on a real aarch64 userland, under QEMU user emulation (root):
#   1. an arm64 Debian bookworm (Python 3.11, as Raspberry Pi OS) with debootstrap + qemu-user-static;
#   2. edgesplit's wheel installed in it with the [litert] extra, exactly as the README tells a Pi owner;
#   3. the raspberry-pi bundle's edge half run there on the real aarch64 ai-edge-litert wheel, and here
#      on x86, over the same images; the codes compared (benchmarks/testbed/compare_codes.py).
# Usage: sudo benchmarks/testbed/aarch64.sh [WORK]   (default /var/tmp/edgesplit-aarch64; the userland is
# kept there and reused). Writes benchmarks/results/aarch64/{aarch64.log,codes.json}. Emulated timings
# mean nothing: what counts is that it installs and computes the same codes.
set -euo pipefail
WORK=${1:-/var/tmp/edgesplit-aarch64}
ROOTFS=$WORK/rootfs
REPO=$(cd "$(dirname "$0")/../.." && pwd)
RESULTS=$REPO/benchmarks/results/aarch64
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
IMAGES=200
mkdir -p "$WORK" "$RESULTS"
exec > >(tee "$RESULTS/aarch64.log") 2>&1
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "host: $(uname -m), $(. /etc/os-release; echo "$PRETTY_NAME")"
if [ "$(id -u)" != 0 ]; then echo "needs root (binfmt_misc, debootstrap, chroot)"; exit 2; fi
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
"$PYTHON" "$REPO/benchmarks/testbed/edge_codes.py" --bundle "$WORK/bundle.tar" --source "$WORK/images.npz" \
  --limit $IMAGES --output "$WORK/codes-x86_64.npz"

step "aarch64: a venv and the wheel with [litert], as the README says"
mkdir -p "$ROOTFS/work" && cp "$WORK"/dist/*.whl "$WORK/bundle.tar" "$WORK/images.npz" \
  "$REPO/benchmarks/testbed/edge_codes.py" "$ROOTFS/work/"
WHEEL=$(basename "$WORK"/dist/*.whl)
started=$(date +%s)
chroot "$ROOTFS" sh -c "python3 -m venv /opt/edgesplit && /opt/edgesplit/bin/pip install -q '/work/$WHEEL[litert]'"
step "installed in $(( $(date +%s) - started )) s: $(chroot "$ROOTFS" /opt/edgesplit/bin/pip list 2>/dev/null \
  | grep -iE '^(edgesplit|ai-edge-litert|numpy) ' | tr -s ' ' | paste -sd ';')"
chroot "$ROOTFS" /opt/edgesplit/bin/python -c "import torch" 2>/dev/null && { echo "torch got installed"; exit 1; }
step "aarch64: the edge half on ai-edge-litert"
chroot "$ROOTFS" /opt/edgesplit/bin/python /work/edge_codes.py --bundle /work/bundle.tar \
  --source /work/images.npz --limit $IMAGES --output /work/codes-aarch64.npz
cp "$ROOTFS/work/codes-aarch64.npz" "$WORK/"
step "compare"
"$PYTHON" "$REPO/benchmarks/testbed/compare_codes.py" "$WORK/codes-x86_64.npz" "$WORK/codes-aarch64.npz" \
  --output "$RESULTS/codes.json"
step "done"
