#!/usr/bin/env bash
# fresh-machine.sh — run `make demo` and `make test` the way a newcomer meets
# them, so that nothing installed earlier on this machine is found:
#
#  - a clean clone of the checkout's HEAD (committed work only) in a temp dir,
#    with a read-only copy of shared/ beside it, as CI lays them out;
#  - an environment made from nothing (env -i): GOPATH, GOBIN, GOMODCACHE,
#    GOCACHE, HOME and the caches of the VM test kernel
#    ($TWINROOT_VMTEST_CACHE), of the reference tools and benchmarks
#    ($TWINROOT_BENCH_CACHE) and of the e2e images ($TWINROOT_E2E_CACHE)
#    are empty temp directories;
#  - PATH holds the directory of the go command and the system directories,
#    and no Go tool the Makefile installs (GO_TOOLS, e.g. staticcheck);
#  - as root, in a private mount namespace, the default locations are hidden
#    under empty read-only tmpfs mounts ($HOME/go, $HOME/.cache/go-build,
#    /var/cache/twinroot-*, the shared/ directory this checkout uses, any
#    GO_TOOLS binary in a system directory), so code that ignores the
#    variables above finds nothing and cannot write there.
#
# Debian packages cannot be emptied this way: whatever apt installed on this
# machine stays installed. The script prints which of the Makefile's packages
# this machine lacks (what make's apt step installs during this run) and,
# with FRESH_BASELINE=FILE (the package list of a new machine image: one name
# a line, or "apt<TAB>name<TAB>version" lines), which ones a new machine lacks.
#
# Usage: test/fresh-machine.sh [make target...]     (default: demo test)
# Environment: FRESH_DIR=DIR   work directory (default: a new /var/tmp/twinroot-fresh.*);
#                              one kept from an earlier run is reused as it is
#                              (clone and caches: the cost of a second run)
#              FRESH_KEEP=1    keep the work directory (it is kept anyway on failure)
#              FRESH_TAIL=N    how many last lines of each command to print (default 15)
#              FRESH_NO_HIDE=1 do not hide the default locations (no mount namespace)
#              FRESH_BASELINE  see above
# Each command's full output is in <work dir>/logs/<target>.log. Exits non-zero
# when any command fails.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && git rev-parse --show-toplevel)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(demo test)
TAIL=${FRESH_TAIL:-15}

log() { printf 'fresh-machine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# findshared prints the shared/ directory the checkout's tests use (the same
# rule as internal/testshared).
findshared() {
	if [ -n "${TWINROOT_SHARED:-}" ]; then echo "$TWINROOT_SHARED"; return; fi
	local d=$SRC
	while :; do
		[ -d "$d/shared/vectors" ] && { echo "$d/shared"; return; }
		[ "$d" = / ] && return
		d=$(dirname "$d")
	done
}

# makevar NAME prints the value of the Makefile variable NAME.
makevar() { make -s -C "$SRC" --no-print-directory --eval 'fresh-print-%: ; @echo $($*)' "fresh-print-$1"; }

# Re-run inside a private mount namespace (root only) so the default
# locations can be hidden without touching the rest of the machine.
if [ -z "${FRESH_IN_NS:-}" ] && [ -z "${FRESH_NO_HIDE:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
	exec unshare --mount --propagation private env FRESH_IN_NS=1 bash "$0" "$@"
fi

GO=$(command -v go) || die "no go command on PATH"
GODIR=$(dirname "$(readlink -f "$GO")")
SHARED=$(findshared)
[ -n "$SHARED" ] || die "no shared/ directory beside $SRC (set TWINROOT_SHARED)"
read -r -a GO_TOOLS <<<"$(makevar GO_TOOLS)"
read -r -a DEBS <<<"$(makevar DEMO_DEB_PACKAGES) $(makevar DEB_PACKAGES)"
mapfile -t DEBS < <(printf '%s\n' "${DEBS[@]}" | sort -u)
ORIG_HOME=${HOME:-/root}

W=${FRESH_DIR:-$(mktemp -d /var/tmp/twinroot-fresh.XXXXXX)}
mkdir -p "$W"/{ci,home,gopath,gobin,gomodcache,gocache,cache/vmtest,cache/bench,cache/e2e,logs}
REV=$(git -C "$SRC" rev-parse HEAD)
log "work directory $W"
if [ ! -d "$W/ci/twinroot/.git" ]; then
	log "clone of $SRC at $(git -C "$SRC" log -1 --format='%h %s' HEAD)"
	[ -z "$(git -C "$SRC" status --porcelain --untracked-files=no)" ] ||
		log "note: the checkout has uncommitted changes; the clone has HEAD only"
fi
if [ -d "$W/ci/twinroot/.git" ]; then
	log "reusing the clone and caches in $W (a second run: what the commands cost once installed)"
	REV=$(git -C "$W/ci/twinroot" rev-parse HEAD)
else
	git clone -q --no-checkout "$SRC" "$W/ci/twinroot"
	git -C "$W/ci/twinroot" checkout -q --detach "$REV"
	cp -a "$SHARED" "$W/ci/shared"
	chmod -R a-w "$W/ci/shared"
fi

# PATH: go's own directory and the system directories, minus any directory
# outside the system ones that holds a Go tool.
PATHDIRS=()
for d in "$GODIR" /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
	[ -d "$d" ] || continue
	case " ${PATHDIRS[*]} " in *" $d "*) continue ;; esac
	PATHDIRS+=("$d")
done
HIDE=()
for d in "${PATHDIRS[@]}"; do
	for t in "${GO_TOOLS[@]}"; do
		p=${t%@*}
		[ -e "$d/${p##*/}" ] && HIDE+=("$d/${p##*/}")
	done
done
FRESH_PATH=$(IFS=:; echo "${PATHDIRS[*]}")

if [ -n "${FRESH_IN_NS:-}" ]; then
	hide() { # hide PATH under an empty read-only tmpfs (a file under /dev/null)
		if [ -d "$1" ]; then
			mount -t tmpfs -o ro,size=4k,mode=0555 fresh-hidden "$1"
		else
			mount --bind -o ro /dev/null "$1"
		fi
		log "hidden: $1"
	}
	for d in "$ORIG_HOME/go" "$ORIG_HOME/.cache/go-build" /var/cache/twinroot-* "$SHARED" "${HIDE[@]}"; do
		[ -e "$d" ] && hide "$d"
	done
elif [ ${#HIDE[@]} -gt 0 ]; then
	die "${HIDE[*]} would be found on PATH; run as root (to hide them) or remove them"
else
	log "default locations not hidden (not root, or FRESH_NO_HIDE): only the variables point elsewhere"
fi

RUN=(env -i HOME="$W/home" PATH="$FRESH_PATH" LANG=C.UTF-8 TERM=dumb CI=true
	GOPATH="$W/gopath" GOBIN="$W/gobin" GOMODCACHE="$W/gomodcache" GOCACHE="$W/gocache"
	TWINROOT_VMTEST_CACHE="$W/cache/vmtest" TWINROOT_BENCH_CACHE="$W/cache/bench"
	TWINROOT_E2E_CACHE="$W/cache/e2e")
for t in "${GO_TOOLS[@]}"; do
	p=${t%@*}
	if found=$("${RUN[@]}" bash -c "command -v ${p##*/}"); then
		die "${p##*/} is still on PATH: $found"
	fi
done
log "PATH=$FRESH_PATH (no ${GO_TOOLS[*]%@*} on it)"

missing=()
for p in "${DEBS[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
log "Debian packages cannot be emptied: what apt installed here stays installed"
log "of the Makefile's ${#DEBS[@]} packages this machine lacks ${#missing[@]}${missing[*]:+: ${missing[*]}} (make's apt step installs them)"
if [ -n "${FRESH_BASELINE:-}" ]; then
	[ -r "$FRESH_BASELINE" ] || die "FRESH_BASELINE=$FRESH_BASELINE: not readable"
	new=()
	for p in "${DEBS[@]}"; do
		awk -v p="$p" -F'\t' '!/^#/ && (NF == 1 ? $1 : $2) == p { found = 1 } END { exit !found }' "$FRESH_BASELINE" || new+=("$p")
	done
	log "a new machine ($(basename "$FRESH_BASELINE")) lacks ${#new[@]}${new[*]:+: ${new[*]}}"
fi

before=$(ls -d /var/cache/twinroot-* 2>/dev/null || true)
status=0
SUMMARY=()
for target in "${TARGETS[@]}"; do
	out=$W/logs/$target.log
	log "make $target (output in $out)"
	start=$EPOCHREALTIME
	rc=0
	(cd "$W/ci/twinroot" && "${RUN[@]}" make "$target") </dev/null >"$out" 2>&1 || rc=$?
	secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
	line="make $target: exit $rc, wall time ${secs} s ($((secs / 60)) min $((secs % 60)) s), load average then $(cut -d' ' -f1-3 /proc/loadavg)"
	SUMMARY+=("$line")
	log "$line; last $TAIL lines:"
	tail -n "$TAIL" "$out"
	[ "$rc" = 0 ] || status=1
done

# A default cache that did not exist could not be hidden: say if one appeared
# (from this run's code ignoring its variable, or from another process).
for d in $(ls -d /var/cache/twinroot-* 2>/dev/null || true); do
	grep -qxF "$d" <<<"$before" || log "warning: $d appeared during the run: a default cache not overridden here?"
done
log "summary for $(git -C "$W/ci/twinroot" log -1 --format='%h' HEAD) on $(nproc) cores:"
printf '  %s\n' "${SUMMARY[@]}" >&2
if [ "$status" = 0 ] && [ -z "${FRESH_KEEP:-}" ]; then
	chmod -R u+w "$W" && rm -rf "$W"
else
	log "kept $W"
fi
exit "$status"
