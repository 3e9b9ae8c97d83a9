#!/bin/bash
# bench/pull.sh: `updatectl pull` from a local docker-registry against the
# reference pipeline `skopeo copy docker://… oci:DIR` + `tar -x` of each layer.
#
# Builds a generated image (~550 MB, ~15,000 files, 4 gzip layers written by
# GNU tar and gzip -6; scale 2x1 doubles the files (and so the bytes), 1x2 the bytes per file), pushes it into a docker-registry on
# loopback with skopeo, then measures wall time and peak RSS (GNU time) of:
#   reference: skopeo copy to an OCI layout, then tar -x of every layer, then sync
#   updatectl: pull into a fresh store (its commit includes a syncfs)
# and checks: wall(updatectl) / wall(reference) <= 1.0 and peak RSS <= 150 MB,
# at each scale. Peak RSS follows the file count (the merged tree is in
# memory, ~1 KB per file) and not the content size (streamed).
#
# Usage: bash bench/pull.sh            (run from the repository root; root needed for nothing)
#        SCALES="1x1" bash bench/pull.sh (one size only)
#
# At the scales in INCR (default 1x1) it also pulls a v2 that adds one layer
# of 5 % more files to v1 (a derived image: 95 % of its objects shared),
# into the store v1 went to, and prints its time and the disk's writes
# as a share of v1's: the incremental pull.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0
SCALES=${SCALES:-"1x1 2x1 1x2"} # FILESxBYTES multipliers: base, twice the image (files), twice the bytes per file
MAX_RATIO=${MAX_RATIO:-1.0}
MAX_RSS_MB=${MAX_RSS_MB:-150}
ROUNDS=${ROUNDS:-2}
INCR=${INCR:-1x1}
WORK=$(mktemp -d /var/tmp/twinroot-bench-pull.XXXXXX)
REGPID=
cleanup() {
	if [ -n "$REGPID" ]; then kill "$REGPID" 2>/dev/null; wait "$REGPID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -o "$WORK/updatectl" ./cmd/updatectl

# mkoci_tar LAYOUT TAG DIR...: an OCI layout with one gzip layer per DIR,
# written by GNU tar and gzip (the reference tools), config for linux/amd64.
mkoci_tar() {
	python3 - "$@" <<'EOF'
import hashlib, json, os, subprocess, sys
layout, tag, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return d
layers, diff_ids = [], []
for d in dirs:
    raw = subprocess.run(["tar", "--numeric-owner", "-C", d, "-cf", "-", "."], check=True, capture_output=True).stdout
    gz = subprocess.run(["gzip", "-6", "-n"], input=raw, check=True, capture_output=True).stdout
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + put(gz), "size": len(gz)})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
    "layers": layers}).encode()
md = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
    "size": len(man), "annotations": {"org.opencontainers.image.ref.name": tag}}]}, open(os.path.join(layout, "index.json"), "w"))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
EOF
}

# Generate layer directories: a file-size mix like an OS tree (many small
# files, some large ones), half text-like (compressible), half random.
gen() { # DIR FILE_SCALE BYTE_SCALE
	python3 - "$1" "$2" "$3" <<'EOF'
import os, random, sys
root, scale, bscale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42 * scale)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choice(words) for _ in range(16)) + b"\n"
    return bytes(out[:n])
total, files = 0, 0
per_layer = [6000, 4000, 3000, 2000]
for li, count in enumerate(per_layer):
    d = os.path.join(root, "l%d" % li)
    for i in range(count * scale):
        sub = os.path.join(d, "usr", "lib%d" % (i % 50), "pkg%d" % (i % 300))
        os.makedirs(sub, exist_ok=True)
        r = rnd.random()
        if r < 0.15:
            size = rnd.randint(0, 64)
        elif r < 0.85:
            size = rnd.randint(65, 32 << 10)
        elif r < 0.99:
            size = rnd.randint(32 << 10, 256 << 10)
        else:
            size = rnd.randint(200 << 10, 1 << 20)
        size *= bscale
        data = text(size) if rnd.random() < 0.5 else os.urandom(size)
        with open(os.path.join(sub, "f%d-%d" % (li, i)), "wb") as f:
            f.write(data)
        total += size
        files += 1
print("generated %d files, %.0f MB" % (files, total / 1e6))
EOF
}

# Registry.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
EOF
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
REG=127.0.0.1:$PORT

measure() { # OUTFILE CMD... ; prints "wall_seconds max_rss_kb"
	local out=$1
	shift
	sync
	/usr/bin/time -f "%e %M" -o "$out" "$@" >"$out.log" 2>&1
	cat "$out"
}

# written: bytes the disk under WORK has written so far (after a sync).
written() {
	sync
	local d
	d=$(stat -c %d "$WORK")
	awk '{ printf "%.0f\n", $7 * 512 }' "/sys/dev/block/$((d >> 8)):$((d & 255))/stat"
}

fail=0
for scale in $SCALES; do
	echo "== scale $scale"
	src="$WORK/src$scale"
	mkdir -p "$src"
	gen "$src" "${scale%x*}" "${scale#*x}"
	mkoci_tar "$WORK/layout$scale" v1 "$src"/l0 "$src"/l1 "$src"/l2 "$src"/l3
	skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/layout$scale:v1" "docker://$REG/bench/img$scale:v1"
	if [[ " $INCR " == *" $scale "* ]]; then
		# v2: v1's layers plus one of 5 % more files (750 per 15,000).
		python3 -c '
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
for i in range(n):
    sub = os.path.join(root, "usr", "lib%d" % (i % 50), "new%d" % (i % 30))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "g%d" % i), "wb") as f:
        f.write(os.urandom(rnd.randint(65, 72 << 10)))
' "$src/l4" "$((750 * ${scale%x*}))"
		rm -rf "$WORK/layout$scale"
		mkoci_tar "$WORK/layout$scale" v2 "$src"/l0 "$src"/l1 "$src"/l2 "$src"/l3 "$src"/l4
		skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/layout$scale:v2" "docker://$REG/bench/img$scale:v2"
	fi
	rm -rf "$src" "$WORK/layout$scale"
	# Warm the registry's files into the page cache for both runs alike.
	cat "$WORK"/registry/docker/registry/v2/blobs/sha256/*/*/data >/dev/null

	# Reference: skopeo copy to an OCI layout + tar -x of each layer + sync.
	ref="$WORK/ref$scale"
	cat >"$WORK/ref.sh" <<EOF
set -e
mkdir -p $ref
skopeo --insecure-policy copy -q --src-tls-verify=false docker://$REG/bench/img$scale:v1 oci:$ref/oci:v1
mkdir -p $ref/root
m=\$(python3 -c 'import json,sys; i=json.load(open("$ref/oci/index.json")); print(i["manifests"][0]["digest"].split(":")[1])')
for l in \$(python3 -c 'import json; m=json.load(open("$ref/oci/blobs/sha256/'\$m'")); print(" ".join(x["digest"].split(":")[1] for x in m["layers"]))'); do
	tar -xf $ref/oci/blobs/sha256/\$l -C $ref/root
done
sync
EOF
	# ROUNDS alternating runs of each; the best wall time of each counts
	# (the machine may be shared), the largest RSS.
	rwall=999999 uwall=999999 rrss=0 urss=0
	for round in $(seq "$ROUNDS"); do
		read -r w r < <(measure "$WORK/t.ref" bash "$WORK/ref.sh")
		rwall=$(awk -v a="$w" -v b="$rwall" 'BEGIN { print (a < b ? a : b) }')
		rrss=$((r > rrss ? r : rrss))
		du=$(du -sm "$ref/root" | cut -f1)
		files=$(find "$ref/root" -type f | wc -l)
		rm -rf "$ref"
		read -r w r < <(measure "$WORK/t.pull" "$WORK/updatectl" --store "$WORK/store$scale" pull --tls-verify=false --registries-conf - "docker://$REG/bench/img$scale:v1")
		uwall=$(awk -v a="$w" -v b="$uwall" 'BEGIN { print (a < b ? a : b) }')
		urss=$((r > urss ? r : urss))
		echo "round $round: reference ${rwall}s best so far, updatectl ${w}s"
		tail -1 "$WORK/t.pull.log"
		rm -rf "$WORK/store$scale"
	done
	if [[ " $INCR " == *" $scale "* ]]; then
		# The incremental pull: v1 into a fresh store, then v2 into it.
		cat >"$WORK/incr.sh" <<EOF
exec "$WORK/updatectl" --store "$WORK/incr$scale" pull --tls-verify=false --registries-conf - "docker://$REG/bench/img$scale:\$1"
EOF
		w0=$(written)
		read -r t1 _ < <(measure "$WORK/t.v1" bash "$WORK/incr.sh" v1)
		w1=$(written)
		read -r t2 _ < <(measure "$WORK/t.v2" bash "$WORK/incr.sh" v2)
		w2=$(written)
		tail -1 "$WORK/t.v2.log"
		echo "incremental pull: v1 ${t1}s, $(((w1 - w0) / 1000000)) MB written; v2 (+5 % files) ${t2}s, $(((w2 - w1) / 1000000)) MB written"
		echo "incremental pull / full pull: $(awk -v a="$t2" -v b="$t1" 'BEGIN { printf "%.1f", 100 * a / b }') % of the time, $(awk -v a="$((w2 - w1))" -v b="$((w1 - w0))" 'BEGIN { printf "%.1f", 100 * a / b }') % of the bytes written"
		rm -rf "$WORK/incr$scale"
	fi
	ratio=$(awk -v a="$uwall" -v b="$rwall" 'BEGIN { printf "%.2f", a / b }')
	echo "image: $files files, $du MB unpacked"
	echo "reference (skopeo copy + tar -x + sync): best ${rwall}s, peak RSS $((rrss / 1024)) MB (largest process)"
	echo "updatectl pull (incl. syncfs):           best ${uwall}s, peak RSS $((urss / 1024)) MB"
	echo "ratio updatectl/reference: $ratio (limit $MAX_RATIO)"
	if awk -v r="$ratio" -v m="$MAX_RATIO" 'BEGIN { exit !(r > m) }'; then
		echo "FAIL: ratio $ratio > $MAX_RATIO"
		fail=1
	fi
	if [ $((urss / 1024)) -gt "$MAX_RSS_MB" ]; then
		echo "FAIL: peak RSS $((urss / 1024)) MB > $MAX_RSS_MB MB"
		fail=1
	fi
done
exit $fail
