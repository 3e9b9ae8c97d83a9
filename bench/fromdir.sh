#!/bin/bash
# bench/fromdir.sh: composefs image creation from a directory.
#
# Tree: a Debian bookworm minbase root file system made once with
# debootstrap and cached in $CACHE/debian-root (about 9,000 paths; set
# TREE=/some/dir to use another tree, e.g. TREE=/usr).
# Timed, best of 3, warm page cache, wall and CPU seconds:
#   1. updatectl image create TREE OUT                 (digests, no store)
#   2. updatectl image create --digest-store S TREE OUT (digests + copies,
#      fresh store each run)
#   3. fsverity digest over the same files (find -type f -size +64c | xargs
#      fsverity digest), the reference tool's single-threaded digest cost
#   4. reference mkcomposefs (composefs 1.0.8 from bench/reference-tools.sh)
#      with the same two command lines, when it can be had.
# It also reports whether our image equals mkcomposefs's byte for byte
# (it differs exactly when the tree has hardlinks, which mkcomposefs turns
# into copies and updatectl keeps).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/updatectl}
CACHE=${TWINROOT_BENCH_CACHE:-/var/cache/twinroot-bench}
[ -x "$BIN" ] || make build >/dev/null

if [ -z "${TREE:-}" ]; then
	TREE=$CACHE/debian-root
	if [ ! -d "$TREE" ]; then
		mkdir -p "$CACHE"
		rm -rf "$TREE.tmp"
		echo "debootstrap --variant=minbase bookworm into $TREE (once)..." >&2
		debootstrap --variant=minbase bookworm "$TREE.tmp" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
			{ tail "$CACHE/debootstrap.log"; exit 1; }
		mv "$TREE.tmp" "$TREE"
	fi
fi
# The store and images go on the tree's file system (reflinks, if any,
# need that).
tmp=$(mktemp -d "$(dirname "$TREE")/.bench-fromdir.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

paths=$(find "$TREE" | wc -l)
files=$(find "$TREE" -type f | wc -l)
ext=$(find "$TREE" -type f -size +64c | wc -l)
bytes=$(find "$TREE" -type f -size +64c -printf '%s\n' | awk '{s+=$1} END {print s}')
hard=$(find "$TREE" -type f -links +1 | wc -l)
printf 'tree %s: %d paths, %d regular files, %d of them > 64 bytes (%.1f MiB), %d with hardlinks; %d CPUs\n' \
	"$TREE" "$paths" "$files" "$ext" "$(awk "BEGIN{print $bytes/1048576}")" "$hard" "$(nproc)"

# measure LABEL CMD...: best-of-3 wall and CPU time of CMD (run with a
# fresh $tmp/store and $tmp/out.cfs).
measure() {
	local label=$1 best_wall="" best_cpu=""
	shift
	for _ in 1 2 3; do
		rm -rf "$tmp/store" "$tmp/out.cfs"
		/usr/bin/time -f '%e %U %S' -o "$tmp/time.txt" "$@" >/dev/null 2>"$tmp/err.txt" ||
			{ cat "$tmp/err.txt"; exit 1; }
		local wall cpu
		read -r wall u s <"$tmp/time.txt"
		cpu=$(awk "BEGIN{print $u+$s}")
		if [ -z "$best_wall" ] || awk "BEGIN{exit !($wall < $best_wall)}"; then best_wall=$wall; fi
		if [ -z "$best_cpu" ] || awk "BEGIN{exit !($cpu < $best_cpu)}"; then best_cpu=$cpu; fi
	done
	printf '%-48s wall %6.2f s   cpu %6.2f s\n' "$label" "$best_wall" "$best_cpu"
}

measure "updatectl image create" "$BIN" image create "$TREE" "$tmp/out.cfs"
measure "updatectl image create --digest-store" "$BIN" image create --digest-store "$tmp/store" "$TREE" "$tmp/out.cfs"
cp "$tmp/out.cfs" "$tmp/our.cfs" 2>/dev/null || "$BIN" image create "$TREE" "$tmp/our.cfs"
digest_all() { find "$TREE" -type f -size +64c -print0 | xargs -0 -r fsverity digest; }
export -f digest_all
export TREE
measure "fsverity digest (files > 64 bytes, 1 process)" bash -c digest_all

if refdir=$(bash bench/reference-tools.sh 2>/dev/null | tail -n 1) && [ -x "$refdir/mkcomposefs" ]; then
	mk=$refdir/mkcomposefs
	measure "mkcomposefs (reference)" "$mk" "$TREE" "$tmp/out.cfs"
	measure "mkcomposefs --digest-store (reference)" "$mk" --digest-store="$tmp/store" "$TREE" "$tmp/out.cfs"
	"$mk" "$TREE" "$tmp/ref.cfs"
	if cmp -s "$tmp/ref.cfs" "$tmp/our.cfs"; then
		echo "image: identical to mkcomposefs's"
	else
		echo "image: differs from mkcomposefs's ($hard hardlinked files kept as hardlinks)"
	fi
else
	echo "reference mkcomposefs unavailable (bench/reference-tools.sh failed); skipped"
fi
