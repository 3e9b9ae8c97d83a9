#!/usr/bin/env bash
# bench/deploy.sh — deployments (run by `make bench`, after `make build`):
#  1. the /etc three-way merge of a Debian trixie minbase /etc with 50 local
#     changes of every kind (bench/deploy_tool.go changes) against an update
#     that changes, adds and removes files of its own: deploy.Merge + Apply +
#     one syncfs, against `cp -a` of the same local /etc + sync. Target: ≤ 2×.
#     Also reported: the merge with an fsync of every file instead of one
#     syncfs, and both without any sync.
#  2. deploying a committed image (no pull): deploy.Create with that merge,
#     plus a plain copy of the image's kernel and initramfs + sync (copying
#     them to the boot partition is boot's job; the plain copy stands in),
#     against the floor: `cp -a` of the image's /etc + copying the kernel and
#     initramfs + sync. Target: ≤ 1.5×. Wall times from the shell, process
#     start included.
# The trixie tree is made once with debootstrap (--variant=minbase, from the
# mirror apt already uses) and cached in /var/cache/twinroot-bench; without
# network the host's own / stands in, and the script says so. Warm page
# cache; medians of ROUNDS (default 5) interleaved rounds. Timings on a
# shared machine are not a test: the script prints the ratios and fails only
# when something does not work.
# Environment: ROUNDS, BENCH_DIR (default: a new directory under /var/tmp),
# ROOTFS (a tree to use instead of the cached trixie one).
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATECTL=${UPDATECTL:-$PWD/bin/updatectl}
[ -x "$UPDATECTL" ] || { echo "deploy.sh: build first: make build" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "deploy.sh: needs root (owners, device nodes)" >&2; exit 1; }
ROUNDS=${ROUNDS:-5}
CACHE=/var/cache/twinroot-bench
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/twinroot-deploy-bench.XXXXXX)}
trap 'rm -rf "$BENCH_DIR"' EXIT

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.4f\\n\", $* }"; }
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# The trixie tree.
mirror() {
	local m
	m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
	echo "${m:-http://deb.debian.org/debian}"
}
STANDIN=""
if [ -z "${ROOTFS:-}" ]; then
	ROOTFS=$CACHE/trixie-minbase
	if [ ! -e "$ROOTFS/etc/debian_version" ]; then
		mkdir -p "$CACHE"
		echo "making $ROOTFS with debootstrap (once)..."
		if ! flock "$CACHE/trixie.lock" bash -c "[ -e '$ROOTFS/etc/debian_version' ] || {
			rm -rf '$ROOTFS.tmp' && debootstrap --variant=minbase trixie '$ROOTFS.tmp' '$(mirror)' >'$CACHE/trixie-debootstrap.log' 2>&1 &&
			mv '$ROOTFS.tmp' '$ROOTFS'; }"; then
			echo "deploy.sh: debootstrap failed (see $CACHE/trixie-debootstrap.log); the host's / stands in" >&2
			ROOTFS=/
			STANDIN=" (host / as a stand-in: no trixie tree)"
		fi
	fi
fi

TOOL=$BENCH_DIR/deploy_tool
CGO_ENABLED=0 go build -o "$TOOL" bench/deploy_tool.go
SYS=$BENCH_DIR/sysroot
mkdir -p "$SYS/var/lib" && echo keep >"$SYS/var/lib/keep" # a /var in use: no seeding
"$UPDATECTL" --store "$SYS/twinroot" store init >/dev/null

# Base image: the tree with a kernel and initramfs of realistic sizes.
BASE=$BENCH_DIR/base
NEW=$BENCH_DIR/new
KVER=6.12.0-bench
# Only what deploying reads: /etc and os-release (the rest of the image
# is never touched by a deployment).
mkdir -p "$BASE/usr/lib" "$BASE/var"
cp -a "$ROOTFS/etc" "$BASE/"
cp -L "$ROOTFS/usr/lib/os-release" "$BASE/usr/lib/" 2>/dev/null || true
mkdir -p "$BASE/usr/lib/modules/$KVER"
head -c 11M /dev/urandom >"$BASE/usr/lib/modules/$KVER/vmlinuz"
head -c 38M /dev/urandom >"$BASE/usr/lib/modules/$KVER/initramfs.img"
BASE_IMG=$("$UPDATECTL" --store "$SYS/twinroot" store import "$BASE" 2>/dev/null | tail -1)

# The update: 15 files changed (one of them changed locally too: a
# conflict), 10 added, 2 removed, a new kernel.
cp -a "$BASE" "$NEW"
mapfile -t FILES < <(cd "$NEW/etc" && find . -type f | sort | sed 's|^\./||')
for f in "${FILES[@]: -15}" "${FILES[0]}"; do echo "# updated by the image" >>"$NEW/etc/$f"; done
mkdir -p "$NEW/etc/new.d" && for i in $(seq 10); do echo "new $i" >"$NEW/etc/new.d/$i.conf"; done
rm -f "$NEW/etc/${FILES[-16]}" "$NEW/etc/${FILES[-17]}"
head -c 11M /dev/urandom >"$NEW/usr/lib/modules/$KVER/vmlinuz"
head -c 38M /dev/urandom >"$NEW/usr/lib/modules/$KVER/initramfs.img"
NEW_IMG=$("$UPDATECTL" --store "$SYS/twinroot" store import "$NEW" 2>/dev/null | tail -1)

read -r BOOTED _ < <("$TOOL" deploy "$SYS" "$BASE_IMG")
LOCAL=$SYS/twinroot/deployments/$BOOTED/etc
"$TOOL" changes "$LOCAL" >/dev/null
ETC_FILES=$(find "$LOCAL" | wc -l)
ETC_KB=$(du -sk "$LOCAL" | cut -f1)
echo "== /etc: $ETC_FILES entries, $ETC_KB KiB, 50 local changes$STANDIN"

# 1. Merge vs cp -a, interleaved.
OUT=$SYS/twinroot/bench-out # on the store's filesystem, as a deployment's etc
: >"$BENCH_DIR/cp" >"$BENCH_DIR/cpnosync" >"$BENCH_DIR/merge" >"$BENCH_DIR/mergefsync" >"$BENCH_DIR/mergenosync" >"$BENCH_DIR/mergeinproc"
for r in $(seq "$ROUNDS"); do
	rm -rf "$OUT" && sync
	t0=$(now); cp -a "$LOCAL" "$OUT"; t1=$(now); sync; t2=$(now)
	calc "$t2 - $t0" >>"$BENCH_DIR/cp"; calc "$t1 - $t0" >>"$BENCH_DIR/cpnosync"
	rm -rf "$OUT" && sync
	t0=$(now); read -r inproc actions conflicts < <("$TOOL" merge "$SYS" "$BASE_IMG" "$NEW_IMG" "$LOCAL" "$OUT"); t1=$(now)
	calc "$t1 - $t0" >>"$BENCH_DIR/merge"; echo "$inproc" >>"$BENCH_DIR/mergeinproc"
	rm -rf "$OUT" && sync
	t0=$(now); "$TOOL" merge "$SYS" "$BASE_IMG" "$NEW_IMG" "$LOCAL" "$OUT" fsync >/dev/null; t1=$(now)
	calc "$t1 - $t0" >>"$BENCH_DIR/mergefsync"
	rm -rf "$OUT" && sync
	t0=$(now); "$TOOL" merge "$SYS" "$BASE_IMG" "$NEW_IMG" "$LOCAL" "$OUT" none >/dev/null; t1=$(now)
	calc "$t1 - $t0" >>"$BENCH_DIR/mergenosync"
done >/dev/null
rm -rf "$OUT"
CP=$(median <"$BENCH_DIR/cp"); CPN=$(median <"$BENCH_DIR/cpnosync")
M=$(median <"$BENCH_DIR/merge"); MF=$(median <"$BENCH_DIR/mergefsync"); MN=$(median <"$BENCH_DIR/mergenosync")
MI=$(median <"$BENCH_DIR/mergeinproc")
echo "merge plan: $actions paths, $conflicts conflicts"
printf '%-44s %8.4f s\n' "cp -a + sync" "$CP" "merge + apply + syncfs" "$M" "  of which in-process (no exec/store open)" "$MI" \
	"merge + apply + fsync per file" "$MF" "cp -a (no sync)" "$CPN" "merge + apply (no sync)" "$MN"
echo "ratio merge/cp -a (with sync): $(calc "$M / $CP")  target <= 2"
echo "ratio merge/cp -a (no sync):   $(calc "$MN / $CPN")"
echo "ratio fsync-per-file/syncfs:   $(calc "$MF / $M")"

# 2. Deploy from the committed image vs the floor.
KDIR=$NEW/usr/lib/modules/$KVER
: >"$BENCH_DIR/floor" >"$BENCH_DIR/deploy" >"$BENCH_DIR/create"
for r in $(seq "$ROUNDS"); do
	rm -rf "$BENCH_DIR/floor-out" "$BENCH_DIR/boot" && mkdir -p "$BENCH_DIR/floor-out" "$BENCH_DIR/boot" && sync
	t0=$(now)
	cp -a "$NEW/etc" "$BENCH_DIR/floor-out/etc"
	cp "$KDIR/vmlinuz" "$KDIR/initramfs.img" "$BENCH_DIR/floor-out/"
	sync
	t1=$(now)
	calc "$t1 - $t0" >>"$BENCH_DIR/floor"
	sync
	t0=$(now)
	read -r id create < <("$TOOL" deploy "$SYS" "$NEW_IMG" "$BOOTED")
	cp "$KDIR/vmlinuz" "$KDIR/initramfs.img" "$BENCH_DIR/boot/"
	sync
	t1=$(now)
	calc "$t1 - $t0" >>"$BENCH_DIR/deploy"; echo "$create" >>"$BENCH_DIR/create"
	"$TOOL" remove "$SYS" "$id"
done >/dev/null
F=$(median <"$BENCH_DIR/floor"); D=$(median <"$BENCH_DIR/deploy"); C=$(median <"$BENCH_DIR/create")
printf '%-44s %8.4f s\n' "floor: cp -a /etc + kernel files + sync" "$F" "deploy.Create + kernel files + sync" "$D" \
	"  of which deploy.Create in-process" "$C"
echo "ratio deploy/floor: $(calc "$D / $F")  target <= 1.5"
