#!/usr/bin/env bash
# Object store benchmarks (run by `make bench`, after `make build`):
#  1. ingest of a 15,000-file, ~550 MB tree with `updatectl store import`,
#     against `cp -a` of the same tree (and `cp -a` + sync, since import
#     makes its objects durable with syncfs);
#  2. commit of a second image sharing 95 % of its files: time and bytes
#     written, as a ratio of the first import;
#  3. removal + gc of a 50,000-object image.
# Environment: BENCH_DIR (default: a new directory under /var/tmp), ROUNDS
# (3: rounds of the cp -a baseline and imports 1 and 2; medians reported),
# COLD (1: drop the page cache before each timed step; needs root), FILES,
# MB (tree shape), GC_FILES.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATECTL=${UPDATECTL:-$PWD/bin/updatectl}
[ -x "$UPDATECTL" ] || { echo "build first: make build" >&2; exit 1; }
FILES=${FILES:-15000}
MB=${MB:-550}
GC_FILES=${GC_FILES:-50000}
ROUNDS=${ROUNDS:-3}
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
# dev_written: bytes written so far to the block device under BENCH_DIR
# (after a sync, so that what a step left dirty counts for that step).
# Data, metadata and directory blocks alike: what the disk really took.
dev_written() {
	sync
	local d
	d=$(stat -c %d "$BENCH_DIR")
	awk '{ printf "%.0f\n", $7 * 512 }' "/sys/dev/block/$((d >> 8)):$((d & 255))/stat" 2>/dev/null || echo 0
}
# cold: with COLD=1, writes back and drops the page cache, dentries and
# inodes before a timed step, so that every step starts from the disk.
cold() {
	if [ "${COLD:-0}" = 1 ]; then
		sync
		echo 3 >/proc/sys/vm/drop_caches
	fi
}
# timed OUTVAR CMD...: runs CMD with stdout to $BENCH_DIR/out, sets OUTVAR
# to the wall time and CPU_OUTVAR to user+sys seconds.
timed() {
	local var=$1
	shift
	cold
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

# Rounds: this VM's page cache and disk vary a lot from run to run (the
# same cp -a took 1 s and 4 s within minutes), so each step runs ROUNDS
# times and the medians are reported, with every round's figures.
# median V...: the middle value (the lower middle one for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
CPS=() CPSYNCS=() IMP1S=() CPU1S=() IMP2S=() CPU2S=() INGEST2S=() RATIOS=() W1S=() W2S=() DW1S=() DW2S=()
for r in $(seq "$ROUNDS"); do
	echo "== round $r: baseline cp -a"
	cold
	t0=$(now)
	cp -a "$TREE" "$BENCH_DIR/copy$r"
	t1=$(now)
	sync
	t2=$(now)
	CPS+=("$(elapsed "$t0" "$t1")")
	CPSYNCS+=("$(elapsed "$t0" "$t2")")
	# The copies are deleted at the end, not here: on an ext4 without a
	# journal (this VM's root), the inode allocator skips inodes freed in
	# the last 60-300 s (recently_deleted), one by one, so deleting 15,000
	# files here would slow every file and directory the imports below
	# create, for a reason that is the baseline's, not the store's.

	echo "== round $r: import 1"
	STORE=$BENCH_DIR/store$r
	"$UPDATECTL" --store "$STORE" store init >/dev/null
	w0=$(store_bytes)
	dw0=$(dev_written)
	timed IMP1 "$UPDATECTL" --store "$STORE" store import "$TREE"
	DW1S+=("$(($(dev_written) - dw0))")
	D1=$(tail -1 "$BENCH_DIR/out")
	W1S+=("$(($(store_bytes) - w0))")
	IMP1S+=("$IMP1")
	CPU1S+=("$CPU_IMP1")

	echo "== round $r: import 2 (5 % of the files changed)"
	n=0
	for f in $(find "$TREE" -type f | sort | awk -v r="$r" 'NR % 20 == r % 20'); do
		head -c 100 /dev/urandom | dd of="$f" bs=100 count=1 conv=notrunc status=none
		n=$((n + 1))
	done
	sync
	w0=$(store_bytes)
	dw0=$(dev_written)
	timed IMP2 "$UPDATECTL" --store "$STORE" --log-level debug store import "$TREE" 2>"$BENCH_DIR/log2"
	DW2S+=("$(($(dev_written) - dw0))")
	# The phases, from the debug log: reading the source tree (stat of
	# every file, links of the unchanged ones, the changed files' content),
	# then the commit (barriers, indexing, image.cfs, publish).
	INGEST2S+=("$(sed -n 's/.*"import: files ingested".*elapsed=\([0-9.]*\)\(m\?s\).*/\1 \2/p' "$BENCH_DIR/log2" |
		awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')")
	D2=$(tail -1 "$BENCH_DIR/out")
	W2S+=("$(($(store_bytes) - w0))")
	[ "$D1" != "$D2" ] || { echo "second image has the same digest" >&2; exit 1; }
	IMP2S+=("$IMP2")
	CPU2S+=("$CPU_IMP2")
	RATIOS+=("$(calc "100 * $IMP2 / $IMP1")")
	echo "   cp -a ${CPS[-1]} s, import 1 $IMP1 s, import 2 $IMP2 s (${RATIOS[-1]} %)"
done
CP=$(median "${CPS[@]}")
CPSYNC=$(median "${CPSYNCS[@]}")
IMP1=$(median "${IMP1S[@]}")
CPU_IMP1=$(median "${CPU1S[@]}")
IMP2=$(median "${IMP2S[@]}")
CPU_IMP2=$(median "${CPU2S[@]}")
INGEST2=$(median "${INGEST2S[@]}")
RATIO=$(median "${RATIOS[@]}")
W1=$(median "${W1S[@]}")
W2=$(median "${W2S[@]}")
DW1=$(median "${DW1S[@]}")
DW2=$(median "${DW2S[@]}")
for r in $(seq "$ROUNDS"); do # keep the last store for the gc step
	[ "$r" = "$ROUNDS" ] || rm -rf "$BENCH_DIR/store$r"
done

echo "== removal + gc of a $GC_FILES-object image"
rm -rf "$TREE" "$BENCH_DIR"/copy*
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
printf '%-46s %.2f s, CPU %.2f s (%.1f %% of import 1)\n' "import 2 ($n files changed)" "$IMP2" \
	"$CPU_IMP2" "$(calc "100 * $CPU_IMP2 / $CPU_IMP1")"
printf '%-46s %.1f %% (rounds: %s)\n' "import 2 / import 1, median of rounds" "$RATIO" "${RATIOS[*]}"
printf '%-46s %.2f s walk and links, %.2f s commit and exit\n' "  import 2 phases" "$INGEST2" \
	"$(calc "$IMP2 - $INGEST2")"
printf '%-46s %.1f MB (%.1f %% of import 1)\n' "store growth, import 2" "$(calc "$W2 / 1000000")" "$(calc "100 * $W2 / $W1")"
printf '%-46s %.1f MB, import 2 %.1f MB (%.1f %%)\n' "device writes: import 1" "$(calc "$DW1 / 1000000")" \
	"$(calc "$DW2 / 1000000")" "$(calc "100 * $DW2 / ($DW1 > 0 ? $DW1 : 1)")"
printf '%-46s %.2f s, CPU %.2f s\n' "store rm ($GC_FILES objects)" "$RM" "$CPU_RM"
printf '%-46s %.2f s\n' "store gc after it" "$GC"
printf '%-46s %s\n' "load average at the end" "$(cut -d" " -f1-3 /proc/loadavg)"
