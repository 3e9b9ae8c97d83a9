#!/bin/bash
# bench/trust.sh: what signature verification adds to a pull, against what it
# adds to skopeo (the reference: the same policy engine in its own binary).
#
# A small image (one layer, 2 MB) is signed with GPG (skopeo copy --sign-by, a
# throwaway keyring) into a docker-registry on loopback with a file://
# lookaside store. Then, medians of ROUNDS interleaved rounds, wall time of:
#   updatectl pull into a fresh store: policy insecureAcceptAnything, and
#     signedBy (the policy engine reads the manifest by digest and the
#     lookaside signature, and verifies it)
#   skopeo copy docker://… to a fresh oci: layout: the same two policies
# and prints each tool's verification overhead (signedBy − accept) and their
# ratio. Timings on a shared machine are not a test: the script fails only
# when something does not work.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0
ROUNDS=${ROUNDS:-7}
WORK=$(mktemp -d /var/tmp/twinroot-bench-trust.XXXXXX)
export GNUPGHOME=$WORK/gnupg
REGPID=
cleanup() {
	if [ -n "$REGPID" ]; then kill "$REGPID" 2>/dev/null; wait "$REGPID" 2>/dev/null || true; fi
	gpgconf --kill all 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -tags containers_image_openpgp -o "$WORK/updatectl" ./cmd/updatectl

# The image: one gzip layer of random files, as an OCI layout.
mkdir -p "$WORK/tree/usr/share/bench" "$WORK/oci/blobs/sha256"
for i in $(seq 1 32); do head -c 65536 /dev/urandom >"$WORK/tree/usr/share/bench/f$i"; done
python3 - "$WORK/oci" "$WORK/tree" <<'EOF'
import hashlib, json, os, subprocess, sys
layout, tree = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return d
raw = subprocess.run(["tar", "--numeric-owner", "-C", tree, "-cf", "-", "."], check=True, capture_output=True).stdout
gz = subprocess.run(["gzip", "-6", "-n"], input=raw, check=True, capture_output=True).stdout
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"org.opencontainers.image.version": "1"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + put(gz), "size": len(gz)}]}).encode()
md = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
    "size": len(man), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, open(os.path.join(layout, "index.json"), "w"))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF

# The registry, the key, registries.d, registries.conf, the policies.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOST=127.0.0.1:$PORT
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: $HOST}
EOF
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -sf "http://$HOST/v2/" >/dev/null && break; sleep 0.1; done
mkdir -m 700 "$GNUPGHOME"
gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key 'bench <bench@twinroot.test>' ed25519 sign never 2>/dev/null
FPR=$(gpg --list-keys --with-colons 2>/dev/null | awk -F: '/^fpr/{print $10; exit}')
gpg --export "$FPR" >"$WORK/key.gpg"
mkdir -p "$WORK/registries.d"
printf 'docker:\n  %s:\n    lookaside: file://%s/lookaside\n    lookaside-staging: file://%s/lookaside\n' "$HOST" "$WORK" "$WORK" >"$WORK/registries.d/bench.yaml"
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$HOST" >"$WORK/registries.conf"
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf
printf '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/accept.json"
printf '{"default":[{"type":"reject"}],"transports":{"docker":{"%s/os/bench":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"%s"}]}}}' "$HOST" "$WORK/key.gpg" >"$WORK/signed.json"
skopeo --insecure-policy --registries.d "$WORK/registries.d" copy -q --dest-tls-verify=false --sign-by "$FPR" "oci:$WORK/oci:v1" "docker://$HOST/os/bench:v1"

now() { date +%s.%N; }
declare -A T
run() { # name command...
	local s e
	s=$(now)
	"${@:2}" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; echo "trust.sh: $1 failed" >&2; exit 1; }
	e=$(now)
	T[$1]+="$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.6f", e - s }') "
}
for r in $(seq "$ROUNDS"); do
	for p in accept signed; do
		rm -rf "$WORK/store-$p" "$WORK/copy-$p"
		run "updatectl-$p" "$WORK/updatectl" --store "$WORK/store-$p" pull --tls-verify=false --registries.d "$WORK/registries.d" --policy "$WORK/$p.json" "$HOST/os/bench:v1"
		run "skopeo-$p" skopeo --policy "$WORK/$p.json" --registries.d "$WORK/registries.d" copy -q --remove-signatures --src-tls-verify=false "docker://$HOST/os/bench:v1" "oci:$WORK/copy-$p:v1"
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-20s %s\n' "run" "median wall s ($ROUNDS rounds)"
for k in updatectl-accept updatectl-signed skopeo-accept skopeo-signed; do
	printf '%-20s %s\n' "$k" "$(echo "${T[$k]}" | median)"
done
ua=$(echo "${T[updatectl-accept]}" | median); us=$(echo "${T[updatectl-signed]}" | median)
sa=$(echo "${T[skopeo-accept]}" | median); ss=$(echo "${T[skopeo-signed]}" | median)
uo=$(awk -v a="$ua" -v b="$us" 'BEGIN { printf "%.1f", (b - a) * 1000 }'); so=$(awk -v a="$sa" -v b="$ss" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
echo "verification overhead: updatectl ${uo} ms, skopeo ${so} ms"
