#!/usr/bin/env bash
# make demo: the A/B update walk-through on a scratch sysroot and boot
# directory, against a registry on 127.0.0.1 (Debian's docker-registry):
#   two bootc-style sample images built (test/mkoci) and pushed (skopeo),
#   install v1, status, upgrade to v2 (staged), status, the shutdown
#   (finalize) and a reboot into v2 (simulated), status, rollback, status, gc.
# Nothing outside a temporary directory is touched. The reboot is simulated
# by TWINROOT_CMDLINE, which names the file updatectl reads instead of
# /proc/cmdline to learn what is booted.
set -euo pipefail
cd "$(dirname "$0")/.."
U=$PWD/bin/updatectl
[ -x "$U" ] || { echo "bin/updatectl missing: run make build" >&2; exit 1; }
W=$(mktemp -d /tmp/twinroot-demo.XXXXXX)
REG_PID=
cleanup() {
	[ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
T0=$(date +%s.%N)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '\033[2m# %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ updatectl %s\033[0m\n' "$*"; "$U" --sysroot "$S" --boot "$B" "$@"; }

S=$W/sysroot B=$W/boot
mkdir -p "$S" "$B"
export TWINROOT_CMDLINE=$W/cmdline
echo "BOOT_IMAGE=/vmlinuz quiet" > "$TWINROOT_CMDLINE" # not booted from twinroot yet

step "1. a registry on 127.0.0.1 and two bootc-style images"
PORT=$(shuf -i 20000-60000 -n1); while (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do PORT=$(shuf -i 20000-60000 -n1); done
mkdir -p "$W/registry"
cat > "$W/registry.yml" <<EOC
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:$PORT
log:
  level: error
  accesslog:
    disabled: true
EOC
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
REF=127.0.0.1:$PORT/demo/os:stable

# The base tree: what a bootc image carries (a kernel and initramfs under
# /usr/lib/modules/<kver>, os-release, /etc, kernel arguments in kargs.d).
R=$W/rootfs
mkdir -p "$R"/usr/lib/modules/6.12.0 "$R"/usr/lib/bootc/kargs.d "$R"/usr/bin "$R"/etc "$R"/var/lib/demo
head -c 300000 /dev/urandom > "$R"/usr/lib/modules/6.12.0/vmlinuz        # a fake kernel
head -c 200000 /dev/urandom > "$R"/usr/lib/modules/6.12.0/initramfs.img  # a fake initramfs
cp /usr/bin/env /usr/bin/true "$R"/usr/bin/
printf 'NAME="Twinroot Demo"\nID=twinroot-demo\nVERSION_ID=1\nPRETTY_NAME="Twinroot Demo 1"\n' > "$R"/usr/lib/os-release
echo 'kargs = ["console=ttyS0,115200"]' > "$R"/usr/lib/bootc/kargs.d/10-console.toml
echo "demo" > "$R"/etc/hostname
echo "Welcome to twinroot demo v1" > "$R"/etc/motd
go run ./test/mkoci -created 2026-11-01T00:00:00Z -label org.opencontainers.image.version=1 -label containers.bootc=1 "$W/oci" v1 "$R"
# v2 = v1 plus one layer: a new os-release and motd, and a new tool.
L2=$W/layer2
mkdir -p "$L2"/usr/lib "$L2"/usr/bin "$L2"/etc
printf 'NAME="Twinroot Demo"\nID=twinroot-demo\nVERSION_ID=2\nPRETTY_NAME="Twinroot Demo 2"\n' > "$L2"/usr/lib/os-release
echo "Welcome to twinroot demo v2" > "$L2"/etc/motd
cp /usr/bin/false "$L2"/usr/bin/
go run ./test/mkoci -from v1 -created 2026-11-15T00:00:00Z -label org.opencontainers.image.version=2 -label containers.bootc=1 "$W/oci" v2 "$L2"
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:v1" "docker://$REF"
say "pushed v1 as $REF (skopeo)"

step "2. install v1 into a scratch sysroot and boot directory"
run install --tls-verify=false "$REF"
say "the boot directory now holds systemd-boot, the kernel (named by its content) and one entry:"
(cd "$B" && find . -type f | sort | sed 's/^\.\//  /')
say "the entry systemd-boot reads:"
sed 's/^/  /' "$B"/loader/entries/*.conf

step "3. status: v1 is the default deployment"
run status
# The default deployment's twinroot=<deployment>:<composefs digest>, from status --json.
first_arg() {
	"$U" --sysroot "$S" --boot "$B" status --json | awk '
		/^    "default": \{/ { d = 1 }
		d && /^      "id":/ { gsub(/[",]/, "", $2); id = $2 }
		d && /"composefsDigest":/ { gsub(/[",]/, "", $2); print "twinroot=" id ":" $2; exit }'
}
V1=$(first_arg | sed 's/^twinroot=//; s/:.*//')

say "booting v1 (simulated: the kernel command line names its deployment)"
echo "BOOT_IMAGE=/vmlinuz quiet $(first_arg)" > "$TWINROOT_CMDLINE"
say "a local change to v1's /etc, to be kept across the upgrade:"
echo "demo-host-42" > "$S/twinroot/deployments/$V1/etc/hostname"
echo "  /etc/hostname = $(cat "$S/twinroot/deployments/$V1/etc/hostname")"

step "4. v2 pushed; upgrade --check, then upgrade (staged for the next boot)"
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:v2" "docker://$REF"
say "pushed v2 as $REF"
set +e
run upgrade --check --tls-verify=false; rc=$?
set -e
say "upgrade --check exit code: $rc (0 = update available, 77 = up to date)"
run upgrade --tls-verify=false

step "5. status: v2 staged, v1 booted"
run status

step "6. shutdown (finalize) and reboot into v2 (simulated)"
run finalize
V2=$(first_arg | sed 's/^twinroot=//')
echo "BOOT_IMAGE=/vmlinuz quiet twinroot=$V2" > "$TWINROOT_CMDLINE"
say "v2's /etc: hostname kept from the local change, motd from the new image:"
echo "  /etc/hostname = $(cat "$S/twinroot/deployments/${V2%%:*}/etc/hostname")"
echo "  /etc/motd     = $(cat "$S/twinroot/deployments/${V2%%:*}/etc/motd")"
run status
say "entries on the boot partition (v2 first with 3 tries until blessed, v1 the fallback):"
ls "$B"/loader/entries | sed 's/^/  /'

step "7. rollback: v1 boots next"
run rollback
run status

step "8. gc: keeps booted, staged, default and rollback (here: all of them), removes the rest"
run gc
printf '\ndemo finished in %s s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
