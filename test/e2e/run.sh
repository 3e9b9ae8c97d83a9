#!/usr/bin/env bash
# run.sh — the end-to-end scenario (make e2e): builds (or reuses) the OS
# images, starts Debian's docker-registry on 127.0.0.1, pushes the images
# with skopeo, makes the installer and target disks and runs the QEMU
# scenario (test/e2e/*.go), which prints a pass/fail table with timings.
#
# Environment:
#   TWINROOT_E2E_ACCEL=kvm    use KVM (default tcg)
#   TWINROOT_E2E_STEPS=H,1,2  run only these steps (default all)
#   TWINROOT_E2E_SEED=N       seed of the power-cut points (default 12)
#   TWINROOT_E2E_CUTS=N       number of power cuts (default 20)
#   TWINROOT_E2E_KEEP=1       keep the work directory (disks, logs) on success
#   TWINROOT_E2E_CONSOLE=1    copy the guest consoles to stderr
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

log() { echo "e2e: $*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
for tool in qemu-system-x86_64 docker-registry skopeo curl sfdisk mkfs.vfat mcopy debugfs; do
	command -v "$tool" >/dev/null || die "$tool not found (run 'make deps')"
done
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || die "OVMF missing (install ovmf)"

t0=$(date +%s)
OCI=$(bash test/e2e/build-images.sh | tail -n1)
CACHE=$(dirname "$OCI")
KVER=$(cat "$OCI/kernel-version")
mapfile -t V1_LAYERS <"$OCI/v1-layers"
log "images ready after $(($(date +%s) - t0)) s"

W=$(mktemp -d /var/tmp/twinroot-e2e.XXXXXX)
REG_PID=
ok=
cleanup() {
	if [ -n "$REG_PID" ]; then
		kill "$REG_PID" 2>/dev/null || true
		wait "$REG_PID" 2>/dev/null || true
	fi
	if [ -n "${TWINROOT_E2E_KEEP:-}" ]; then
		log "work directory (disks, logs) kept in $W"
	elif [ -n "$ok" ]; then
		rm -rf "$W"
	else
		rm -f "$W"/*.img
		log "logs kept in $W"
	fi
}
trap cleanup EXIT

# The registry: loopback only, JSON access log. A free port can be taken
# between the check and the bind (other tests run too): then try another.
mkdir -p "$W/registry"
for attempt in 1 2 3 4 5; do
	PORT=$(shuf -i 20000-60000 -n1)
	while (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do PORT=$(shuf -i 20000-60000 -n1); done
	cat >"$W/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:$PORT
log:
  level: info
  formatter: json
EOF
	docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
	REG_PID=$!
	for _ in $(seq 100); do
		curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break
		kill -0 "$REG_PID" 2>/dev/null || break
		sleep 0.1
	done
	curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break
	kill "$REG_PID" 2>/dev/null || true
	wait "$REG_PID" 2>/dev/null || true
	REG_PID=
	log "registry did not start on port $PORT (attempt $attempt): $(tail -n1 "$W/registry.log")"
done
[ -n "$REG_PID" ] || die "registry did not start; see $W/registry.log"
tags=(v1 v2 v3)
for i in $(seq -f %02g 0 "$(cat "$OCI/cuts")"); do tags+=("cut-$i"); done
for t in "${tags[@]}"; do
	skopeo copy -q --dest-tls-verify=false "oci:$OCI:$t" "docker://127.0.0.1:$PORT/e2e/os:$t"
done
log "registry on 127.0.0.1:$PORT holds ${tags[*]}"

# The installer disk: v1's tree on a plain ext4 root, booted through OVMF and
# systemd-boot from a hand-written BLS entry.
ROOT_UUID=5f3e2e00-0000-4000-8000-000000000001
esp=$W/installer-esp
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/e2e"
top=${V1_LAYERS[0]} base=${V1_LAYERS[1]}
cp "$base/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$base/usr/lib/modules/$KVER/vmlinuz" "$esp/e2e/vmlinuz"
cp "$top/usr/lib/modules/$KVER/initramfs.img" "$esp/e2e/initramfs.img"
printf 'timeout 0\neditor no\n' >"$esp/loader/loader.conf"
cat >"$esp/loader/entries/e2e-installer.conf" <<EOF
title twinroot e2e: v1 on a plain ext4 root
linux /e2e/vmlinuz
initrd /e2e/initramfs.img
options root=UUID=$ROOT_UUID rw console=ttyS0 panic=5
EOF
bash test/e2e/mkdisk.sh --size 2048 --esp-size 64 --label installer- --root-uuid "$ROOT_UUID" \
	--esp-from "$esp" --root-from "${V1_LAYERS[@]}" "$W/installer.img"
# The target: an empty GPT disk, ESP and a verity-capable ext4 root.
bash test/e2e/mkdisk.sh --size 6144 --esp-size 256 --verity "$W/target.img"

go build -o "$W/e2e" ./test/e2e
args=(-work "$W" -port "$PORT" -oci "$OCI" -installer "$W/installer.img" -target "$W/target.img"
	-updatectl "$REPO/bin/updatectl" -accel "${TWINROOT_E2E_ACCEL:-tcg}" -seed "${TWINROOT_E2E_SEED:-12}"
	-cuts "$(cat "$OCI/cuts")" -steps "${TWINROOT_E2E_STEPS:-all}")
[ -n "${TWINROOT_E2E_CONSOLE:-}" ] && args+=(-console)
rc=0
"$W/e2e" "${args[@]}" | tee "$W/report.txt" || rc=$?
log "whole run: $(($(date +%s) - t0)) s (images, registry, disks and the guests)"
[ "$rc" = 0 ] && ok=1
exit "$rc"
