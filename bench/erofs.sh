#!/bin/bash
# bench/erofs.sh: wall time and peak RSS of composefs image creation from a
# dumpfile (erofs.ParseDump + erofs.Write) through the CLI,
# `updatectl image create --from-file`, measured with /usr/bin/time -v:
#   1. cs9-x86_64-minimal.dump.gz (22,010 entries; reference mkcomposefs
#      --from-file: 0.14 s wall, 27 MiB peak RSS on the project's VM);
#      the image's SHA-256 is checked against the golden vector too;
#   2. a generated dumpfile of 1,000,000 entries (and 100,000, to show that
#      time and memory grow linearly).
# Environment: VECTORS (default ../shared/vectors/composefs), BIN
# (default bin/updatectl, built by `make build`), MKCOMPOSEFS (a reference
# mkcomposefs to measure on the same inputs; default: mkcomposefs from PATH
# if there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/updatectl}
VECTORS=${VECTORS:-../shared/vectors/composefs}
[ -x "$BIN" ] || make build >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

MKCOMPOSEFS=${MKCOMPOSEFS:-$(command -v mkcomposefs || true)}
# Debian 12 has no composefs package: use the one bench/reference-tools.sh unpacks.
[ -n "$MKCOMPOSEFS" ] || MKCOMPOSEFS=$(bash "$(dirname "$0")/reference-tools.sh" 2>/dev/null | tail -n1)/mkcomposefs
[ -x "$MKCOMPOSEFS" ] || MKCOMPOSEFS=

# measure LABEL DUMP [CMD...]: runs CMD (default: image create) on DUMP,
# prints wall seconds, CPU seconds and peak RSS (best of 3).
measure() {
	local label=$1 dump=$2 best_wall="" best_rss="" best_cpu=""
	shift 2
	local cmd=("$@")
	[ ${#cmd[@]} -gt 0 ] || cmd=("$BIN" image create)
	for _ in 1 2 3; do
		/usr/bin/time -v "${cmd[@]}" --from-file "$dump" "$tmp/out.cfs" 2>"$tmp/time.txt" >/dev/null ||
			{ cat "$tmp/time.txt"; exit 1; }
		local wall rss cpu
		wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tmp/time.txt")
		rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tmp/time.txt")
		cpu=$(awk -F': ' '/User time|System time/ {s+=$2} END {print s}' "$tmp/time.txt")
		if [ -z "$best_cpu" ] || awk "BEGIN{exit !($cpu < $best_cpu)}"; then best_cpu=$cpu; fi
		if [ -z "$best_wall" ] || awk "BEGIN{exit !($wall < $best_wall)}"; then best_wall=$wall; fi
		if [ -z "$best_rss" ] || [ "$rss" -lt "$best_rss" ]; then best_rss=$rss; fi
	done
	printf '%-28s wall %6.2f s   cpu %6.2f s   peak RSS %7.1f MiB   (best of 3)\n' "$label" "$best_wall" "$best_cpu" "$(awk "BEGIN{print $best_rss/1024}")"
	LAST_WALL=$best_wall
	LAST_RSS=$best_rss
}

# gen N: a dumpfile of about N entries: directories of 100 entries mixing
# external files (with digests), inline files, symlinks and xattrs.
gen() {
	awk -v n="$1" 'BEGIN {
		print "/ 4096 40755 2 0 0 0 1700000000.0 - - - security.selinux=system_u:object_r:root_t:s0"
		c = 1
		for (d = 0; c < n; d++) {
			printf "/d%06d 4096 40755 2 0 0 0 1700000000.0 - - - security.selinux=system_u:object_r:usr_t:s0\n", d
			c++
			for (f = 0; f < 99 && c < n; f++) {
				m = f % 4
				if (m < 2) {
					h = sprintf("%02x%062x", (d + f) % 256, d * 1000 + f)
					printf "/d%06d/file-%04d %d 100644 1 0 0 0 1700000000.%d %s/%s - %s security.selinux=system_u:object_r:usr_t:s0\n", d, f, 1000 + f * 37, f, substr(h, 1, 2), substr(h, 3), h
				} else if (m == 2) {
					printf "/d%06d/inline-%04d 5 100644 1 0 0 0 1700000000.0 - hello - user.tag=%d\n", d, f, f
				} else {
					printf "/d%06d/link-%04d 9 120777 1 0 0 0 1700000000.0 ../target - -\n", d, f
				}
				c++
			}
		}
	}'
}

echo "== composefs image create --from-file ($BIN)"
if [ -f "$VECTORS/cs9-x86_64-minimal.dump.gz" ]; then
	zcat "$VECTORS/cs9-x86_64-minimal.dump.gz" >"$tmp/cs9.dump"
	CFS_PARSE_STRICT=1 measure "cs9-x86_64-minimal (22k)" "$tmp/cs9.dump"
	want=$(cat "$VECTORS/cs9-x86_64-minimal.dump.gz.sha256")
	got=$(sha256sum "$tmp/out.cfs" | cut -d' ' -f1)
	if [ "$got" != "$want" ]; then
		echo "cs9 image sha256 $got, want $want" >&2
		exit 1
	fi
	echo "   image sha256 matches the golden vector; reference mkcomposefs: 0.14 s, 27 MiB"
	awk "BEGIN{printf \"   ratio to reference: time %.2fx, memory %.2fx\n\", $LAST_WALL/0.14, $LAST_RSS/1024/27}"
	if [ -n "$MKCOMPOSEFS" ]; then
		CFS_PARSE_STRICT=1 measure "  mkcomposefs (reference)" "$tmp/cs9.dump" "$MKCOMPOSEFS"
	fi
else
	echo "cs9 vector not found in $VECTORS: skipped"
fi
# An OS dump of ~60k entries: this machine's /usr/share and /usr/include
# (read-only bind mounts), imaged once with digests and dumped; cached.
OSDUMP=${TWINROOT_BENCH_CACHE:-/var/cache/twinroot-bench}/os-usr.dump
if [ ! -s "$OSDUMP" ]; then
	mkdir -p "$(dirname "$OSDUMP")" "$tmp/os/usr/share" "$tmp/os/usr/include"
	mount --bind -o ro /usr/share "$tmp/os/usr/share"
	mount --bind -o ro /usr/include "$tmp/os/usr/include"
	"$BIN" image create "$tmp/os" "$tmp/os.cfs" &&
		"$BIN" image dump "$tmp/os.cfs" >"$OSDUMP.tmp" && mv "$OSDUMP.tmp" "$OSDUMP"
	umount "$tmp/os/usr/share" "$tmp/os/usr/include"
fi
measure "OS dump ($(wc -l <"$OSDUMP") entries)" "$OSDUMP"
cp "$tmp/out.cfs" "$tmp/ours.cfs"
if [ -n "$MKCOMPOSEFS" ]; then
	measure "  mkcomposefs (reference)" "$OSDUMP" "$MKCOMPOSEFS"
	if cmp -s "$tmp/out.cfs" "$tmp/ours.cfs"; then echo "   images identical"; else echo "   IMAGES DIFFER" >&2; exit 1; fi
fi
for n in 100000 1000000; do
	gen "$n" >"$tmp/gen.dump"
	measure "generated ($((n / 1000))k entries)" "$tmp/gen.dump"
	if [ -n "$MKCOMPOSEFS" ]; then
		measure "  mkcomposefs (reference)" "$tmp/gen.dump" "$MKCOMPOSEFS"
	fi
done
