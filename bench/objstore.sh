#!/usr/bin/env bash
# Object store benchmarks (run by `make bench`, after `make build`):
#  1. ingest of a 15,000-file, ~550 MB tree with `updatectl store import`,
#     against `cp -a` of the same tree (and `cp -a` + sync, since import
#     makes its objects durable with syncfs);
#  2. commit of a second image sharing 95 % of its files: time and bytes
#     written, as a ratio of the first import;
#  3. removal + gc of a 50,000-object image.
# Environment: BENCH_DIR (default: a new directory under /var/tmp), FILES,
# MB (tree shape), GC_FILES.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATECTL=${UPDATECTL:-$PWD/bin/updatectl}
[ -x "$UPDATECTL" ] || { echo "build first: make build" >&2; exit 1; }
FILES=${FILES:-15000}
MB=${MB:-550}
GC_FILES=${GC_FILES:-50000}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/twinroot-bench.XXXXXX)}
trap 'rm -rf "$BENCH_DIR"' EXIT
TREE=$BENCH_DIR/tree
STORE=$BENCH_DIR/store

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }
elapsed() { calc "$2 - $1"; }
store_bytes() { # bytes allocated by the store (hardlinks counted once)
	du -s --block-size=1 "$STORE" | cut -f1
}
# timed OUTVAR CMD...: runs CMD with stdout to $BENCH_DIR/out, sets OUTVAR
# to the wall time and CPU_OUTVAR to user+sys seconds.
timed() {
	local var=$1
	shift
	/usr/bin/time -f "%e %U %S" -o "$BENCH_DIR/time" "$@" >"$BENCH_DIR/out"
	read -r wall user sys <"$BENCH_DIR/time"
	printf -v "$var" '%s' "$wall"
	printf -v "CPU_$var" '%s' "$(calc "$user + $sys")"
}

# gen_tree DIR NFILES TOTAL_BYTES SEED: 80 % small files (1-16 KiB), 20 %
# larger ones sharing the rest of the bytes; 300 directories. perl is
# Essential in Debian.
gen_tree() {
	perl -e '
		my ($dir, $n, $total, $seed) = @ARGV;
		srand($seed);
		open(my $r, "<:raw", "/dev/urandom") or die;
		my $nsmall = int($n * 0.8);
		my @sizes;
		my $sum = 0;
		for (1..$nsmall) { my $s = 1024 + int(rand(15 * 1024)); push @sizes, $s; $sum += $s; }
		my $nlarge = $n - $nsmall;
		my $avg = ($total - $sum) / ($nlarge || 1);
		for (1..$nlarge) { my $s = 65 + int(rand(2 * $avg)); push @sizes, $s; }
		for my $i (0..$#sizes) {
			my $d = sprintf("%s/d%03d", $dir, $i % 300);
			mkdir $d;
			read($r, my $buf, $sizes[$i]) == $sizes[$i] or die;
			open(my $w, ">:raw", sprintf("%s/f%05d", $d, $i)) or die;
			print $w $buf;
			close $w;
		}' "$@"
}

echo "== tree: $FILES files, ~$MB MB in $TREE"
mkdir -p "$TREE"
gen_tree "$TREE" "$FILES" $((MB * 1000 * 1000)) 1
TREE_BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
sync

echo "== baseline: cp -a"
t0=$(now)
cp -a "$TREE" "$BENCH_DIR/copy"
t1=$(now)
sync
t2=$(now)
CP=$(elapsed "$t0" "$t1")
CPSYNC=$(elapsed "$t0" "$t2")
rm -rf "$BENCH_DIR/copy"
sync

echo "== import 1"
"$UPDATECTL" --store "$STORE" store init >/dev/null
w0=$(store_bytes)
timed IMP1 "$UPDATECTL" --store "$STORE" store import "$TREE"
D1=$(tail -1 "$BENCH_DIR/out")
W1=$(($(store_bytes) - w0))

echo "== import 2 (5 % of the files changed)"
n=0
for f in $(find "$TREE" -type f | sort | awk 'NR % 20 == 0'); do
	head -c 100 /dev/urandom | dd of="$f" bs=100 count=1 conv=notrunc status=none
	n=$((n + 1))
done
sync
w0=$(store_bytes)
timed IMP2 "$UPDATECTL" --store "$STORE" store import "$TREE"
D2=$(tail -1 "$BENCH_DIR/out")
W2=$(($(store_bytes) - w0))
[ "$D1" != "$D2" ] || { echo "second image has the same digest" >&2; exit 1; }

echo "== removal + gc of a $GC_FILES-object image"
rm -rf "$TREE"
mkdir -p "$BENCH_DIR/many"
perl -e '
	my ($dir, $n) = @ARGV;
	for my $i (0..$n-1) {
		my $d = sprintf("%s/d%03d", $dir, $i % 500);
		mkdir $d;
		open(my $w, ">", "$d/f$i") or die;
		print $w "object $i " x 20;
		close $w;
	}' "$BENCH_DIR/many" "$GC_FILES"
D3=$("$UPDATECTL" --store "$STORE" store import "$BENCH_DIR/many" | tail -1)
sync
timed RM "$UPDATECTL" --store "$STORE" store rm "$D3"
timed GC "$UPDATECTL" --store "$STORE" store gc
"$UPDATECTL" --store "$STORE" store fsck >/dev/null

printf '\n%-46s %s\n' "metric" "value"
printf '%-46s %d files, %.1f MB\n' "tree" "$FILES" "$(calc "$TREE_BYTES / 1000000")"
printf '%-46s %.2f s\n' "cp -a" "$CP"
printf '%-46s %.2f s\n' "cp -a + sync" "$CPSYNC"
printf '%-46s %.2f s, CPU %.2f s (%.0f objects/s, %.1f MB/s)\n' "store import (durable)" "$IMP1" "$CPU_IMP1" \
	"$(calc "$FILES / $IMP1")" "$(calc "$TREE_BYTES / 1000000 / $IMP1")"
printf '%-46s %.2f x cp -a, %.2f x cp -a + sync\n' "import / baseline" \
	"$(calc "$IMP1 / $CP")" "$(calc "$IMP1 / $CPSYNC")"
printf '%-46s %.1f MB\n' "store growth, import 1" "$(calc "$W1 / 1000000")"
printf '%-46s %.2f s (%.1f %%), CPU %.2f s (%.1f %% of import 1)\n' "import 2 ($n files changed)" "$IMP2" \
	"$(calc "100 * $IMP2 / $IMP1")" "$CPU_IMP2" "$(calc "100 * $CPU_IMP2 / $CPU_IMP1")"
printf '%-46s %.1f MB (%.1f %% of import 1)\n' "store growth, import 2" "$(calc "$W2 / 1000000")" "$(calc "100 * $W2 / $W1")"
printf '%-46s %.2f s, CPU %.2f s\n' "store rm ($GC_FILES objects)" "$RM" "$CPU_RM"
printf '%-46s %.2f s\n' "store gc after it" "$GC"
printf '%-46s %s\n' "load average at the end" "$(cut -d" " -f1-3 /proc/loadavg)"
