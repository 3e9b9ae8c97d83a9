#!/bin/bash
# bench/upgrade.sh: twinroot-update.service's work, measured against a
# docker-registry on loopback whose access log counts the requests.
#
#  1. install a small bootc-style v1 on a scratch sysroot and boot directory;
#  2. the service's command ("upgrade --auto") twice with nothing new:
#     manifest and blob requests per run, counted in the registry's log
#     (expected: 1 manifest, no blob: the manifest is the booted one's, so
#     neither its config nor a layer is fetched);
#  3. a Debian-sized v2 (~550 MB, ~15,000 files in 4 layers, plus the
#     kernel layer) pushed, and "upgrade --auto" again under GNU time:
#     wall time and peak RSS of the upgrade that pulls, deploys and stages it.
# Fails when a no-op run costs more than one manifest request, or the
# upgrade's peak RSS exceeds MAX_RSS_MB (default 200).
#
# Usage: bash bench/upgrade.sh   (root: deployments keep /etc ownership)
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0
MAX_RSS_MB=${MAX_RSS_MB:-200}
FILES_SCALE=${FILES_SCALE:-1}
WORK=$(mktemp -d /var/tmp/twinroot-bench-upgrade.XXXXXX)
REGPID=
cleanup() {
	if [ -n "$REGPID" ]; then kill "$REGPID" 2>/dev/null; wait "$REGPID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
go build -o "$WORK/updatectl" ./cmd/updatectl
go build -o "$WORK/mkoci" ./test/mkoci

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
EOF
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
REF=127.0.0.1:$PORT/bench/os:stable

# The bootc part: kernel, initramfs, os-release, /etc, kargs.d.
B=$WORK/bootc
mkdir -p "$B"/usr/lib/modules/6.12.0 "$B"/usr/lib/bootc/kargs.d "$B"/etc
head -c 12000000 /dev/urandom >"$B"/usr/lib/modules/6.12.0/vmlinuz
head -c 40000000 /dev/urandom >"$B"/usr/lib/modules/6.12.0/initramfs.img
printf 'NAME="Bench"\nVERSION_ID=1\n' >"$B"/usr/lib/os-release
echo bench >"$B"/etc/hostname
"$WORK/mkoci" -label org.opencontainers.image.version=1 "$WORK/oci" v1 "$B"

skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/oci:v1" "docker://$REF"
S=$WORK/sysroot BOOT=$WORK/boot
mkdir -p "$S" "$BOOT"
export TWINROOT_CMDLINE=$WORK/cmdline
echo quiet >"$TWINROOT_CMDLINE"
U() { "$WORK/updatectl" --sysroot "$S" --boot "$BOOT" "$@"; }
U --log-level info install --tls-verify=false "$REF" 2>"$WORK/install.log" || { cat "$WORK/install.log"; exit 1; }
grep "boot:" "$WORK/install.log"
arg=$(grep -ho 'twinroot=[^ ]*' "$BOOT"/loader/entries/*.conf)
echo "quiet $arg" >"$TWINROOT_CMDLINE" # booted v1

# v2: the Debian-sized tree (bench/pull.sh's file-size mix) on top.
python3 - "$WORK/big" "$FILES_SCALE" <<'EOF'
import os, random, sys
root, scale = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choice(words) for _ in range(16)) + b"\n"
    return bytes(out[:n])
total = files = 0
for li, count in enumerate([6000, 4000, 3000, 2000]):
    for i in range(count * scale):
        sub = os.path.join(root, "l%d" % li, "usr", "lib%d" % (i % 50), "pkg%d" % (i % 300))
        os.makedirs(sub, exist_ok=True)
        r = rnd.random()
        size = rnd.randint(0, 64) if r < 0.15 else rnd.randint(65, 32 << 10) if r < 0.85 else rnd.randint(32 << 10, 256 << 10) if r < 0.99 else rnd.randint(200 << 10, 1 << 20)
        with open(os.path.join(sub, "f%d-%d" % (li, i)), "wb") as f:
            f.write(text(size) if rnd.random() < 0.5 else os.urandom(size))
        total += size
        files += 1
print("generated %d files, %.0f MB" % (files, total / 1e6))
EOF
printf 'NAME="Bench"\nVERSION_ID=2\n' >"$WORK/big/l3/usr/os-release-v2"
"$WORK/mkoci" -from v1 -label org.opencontainers.image.version=2 "$WORK/oci" v2 "$WORK/big"/l0 "$WORK/big"/l1 "$WORK/big"/l2 "$WORK/big"/l3
rm -rf "$WORK/big"

# requests LOGFROM: manifest and blob GETs in the registry log since line LOGFROM.
requests() {
	tail -n +"$1" "$WORK/registry.log" | grep -o '"GET /v2/[^"]*' | sed 's/^"GET //' || true
}
fail=0
for run in 1 2; do
	from=$(($(wc -l <"$WORK/registry.log") + 1))
	U upgrade --auto --tls-verify=false >/dev/null 2>&1
	sleep 0.2 # the access log is written after the response
	m=$(requests "$from" | grep -c '/manifests/' || true)
	b=$(requests "$from" | grep -c '/blobs/' || true)
	echo "service run $run, nothing new: $m manifest request(s), $b blob request(s)"
	[ "$m" -eq 1 ] && [ "$b" -eq 0 ] || fail=1
done

skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/oci:v2" "docker://$REF"
size=$(du -sm "$WORK/registry" | cut -f1)
rm -rf "$WORK/oci"
cat "$WORK"/registry/docker/registry/v2/blobs/sha256/*/*/data >/dev/null # page cache, as for the reference runs
# Reference: what fetching and unpacking v2 costs with the standard tools
# (skopeo copy to an OCI layout, tar -x of each layer, sync), as in
# bench/pull.sh; the upgrade does that and also deploys and stages.
ref=$WORK/ref
mkdir -p "$ref"
cat >"$WORK/ref.sh" <<REFEOF
set -e
skopeo --insecure-policy copy -q --src-tls-verify=false docker://$REF oci:$ref/oci:v2
mkdir -p $ref/root
m=\$(python3 -c 'import json; i=json.load(open("$ref/oci/index.json")); print(i["manifests"][0]["digest"].split(":")[1])')
for l in \$(python3 -c 'import json; m=json.load(open("$ref/oci/blobs/sha256/'\$m'")); print(" ".join(x["digest"].split(":")[1] for x in m["layers"]))'); do
	tar -xf $ref/oci/blobs/sha256/\$l -C $ref/root
done
sync
REFEOF
sync
/usr/bin/time -f "%e %M" -o "$WORK/time.ref" bash "$WORK/ref.sh"
read -r rwall rrss <"$WORK/time.ref"
rm -rf "$ref"
sync
/usr/bin/time -v -o "$WORK/time" "$WORK/updatectl" --sysroot "$S" --boot "$BOOT" upgrade --auto --tls-verify=false >"$WORK/up.log" 2>&1
wall=$(grep 'Elapsed (wall clock)' "$WORK/time" | awk '{print $NF}')
rss=$(grep 'Maximum resident set size' "$WORK/time" | awk '{print $NF}')
tail -1 "$WORK/up.log"
secs=$(awk -v w="$wall" 'BEGIN { n = split(w, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }')
echo "upgrade to the Debian-sized v2 (registry holds ${size} MB): wall ${secs}s, peak RSS $((rss / 1024)) MB"
echo "reference (skopeo copy + tar -x + sync, no deploy): wall ${rwall}s, peak RSS $((rrss / 1024)) MB; upgrade/reference wall $(awk -v a="$secs" -v b="$rwall" 'BEGIN { printf "%.2f", a / b }')"
U status | grep -E 'image:|Version' | sed 's/^/  /'
[ $((rss / 1024)) -le "$MAX_RSS_MB" ] || { echo "peak RSS above ${MAX_RSS_MB} MB"; fail=1; }
exit $fail
