#!/usr/bin/env bash
# make demo: the whole pipeline as it exists today, in a scratch sysroot.
#  1. fs-verity digests, compared with the reference `fsverity digest`
#  2. a composefs image from a directory, mounted for real and compared with the source
#  3. the object store: import, list, fsck
#  4. a pull from a registry on 127.0.0.1 (Debian's docker-registry, image pushed by skopeo),
#     then an incremental pull of v2, the pulled image mounted and compared
set -euo pipefail
cd "$(dirname "$0")/.."
U=$PWD/bin/updatectl
W=$(mktemp -d /tmp/twinroot-demo.XXXXXX)
REG_PID=
cleanup() {
	for m in "$W"/mnt*; do mountpoint -q "$m" 2>/dev/null && "$U" image umount "$m" || true; done
	[ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. fs-verity digests: updatectl vs fsverity digest"
mkdir -p "$W/files"
for s in 0 1 4096 4097 1048577; do head -c "$s" /dev/urandom > "$W/files/f$s"; done
"$U" verity digest "$W"/files/* | tee "$W/ours"
fsverity digest "$W"/files/* > "$W/ref"
diff "$W/ours" "$W/ref" && echo "identical to fsverity digest"

step "2. a composefs image from a directory, mounted"
T=$W/tree
mkdir -p "$T/usr/bin" "$T/etc" "$T/var/empty"
cp /usr/bin/env /usr/bin/true "$T/usr/bin/"
ln "$T/usr/bin/true" "$T/usr/bin/true-hardlink"
ln -s ../usr/bin/env "$T/etc/env-link"
echo "twinroot demo" > "$T/etc/motd"
setfattr -n user.demo -v hello "$T/etc/motd"
mkfifo "$T/var/fifo"
"$U" image create --digest-store "$W/objects" --print-digest "$T" "$W/demo.cfs"
fsck.erofs "$W/demo.cfs" >/dev/null && echo "fsck.erofs: clean"
mkdir -p "$W/mnt1"
"$U" image mount "$W/demo.cfs" "$W/objects" "$W/mnt1"
# diff compares content, links and file types; it reports FIFOs rather than compare them.
diff -r --no-dereference -x fifo "$T" "$W/mnt1"
[ -p "$W/mnt1/var/fifo" ]
[ "$(stat -c %i "$W/mnt1/usr/bin/true")" = "$(stat -c %i "$W/mnt1/usr/bin/true-hardlink")" ]
echo "mounted tree equals the source (contents, symlinks, FIFO, hardlink)"
echo "user.demo xattr: $(getfattr --absolute-names -n user.demo --only-values "$W/mnt1/etc/motd")"
"$U" image umount "$W/mnt1"

step "3. the object store"
S=$W/sysroot
"$U" --sysroot "$S" store init
D=$("$U" --sysroot "$S" store import "$T" | tail -n1)
echo "imported image $D"
"$U" --sysroot "$S" store images
"$U" --sysroot "$S" store fsck && echo "store fsck: clean"

step "4. pull from a registry on 127.0.0.1"
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
EOC
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
go run ./test/mkoci -label org.opencontainers.image.version=1 "$W/oci" v1 "$T"
mkdir -p "$W/layer2/etc" && echo "version 2" > "$W/layer2/etc/motd"
go run ./test/mkoci -label org.opencontainers.image.version=2 "$W/oci" v2 "$T" "$W/layer2"
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:v1" "docker://127.0.0.1:$PORT/demo/os:v1"
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:v2" "docker://127.0.0.1:$PORT/demo/os:v2"
P1=$("$U" --sysroot "$S" pull --tls-verify=false "127.0.0.1:$PORT/demo/os:v1" | tail -n1)
echo "pulled v1: $P1"
P2=$("$U" --sysroot "$S" pull --tls-verify=false "127.0.0.1:$PORT/demo/os:v2" | tail -n1)
echo "pulled v2: $P2 (only the new layer was fetched)"
"$U" --sysroot "$S" store images
[ "$P1" = "$D" ] && echo "the pulled v1 has the same composefs digest as the imported tree"
mkdir -p "$W/mnt2"
"$U" image mount "$S/twinroot/images/$P2/image.cfs" "$S/twinroot/images/$P2" "$W/mnt2"
echo "v2 /etc/motd: $(cat "$W/mnt2/etc/motd")"
"$U" image umount "$W/mnt2"
echo "removing v1, then gc"
"$U" --sysroot "$S" store rm "$P1"
"$U" --sysroot "$S" store gc
"$U" --sysroot "$S" store fsck && echo "store fsck: clean"
step "done"
