#!/usr/bin/env bash
# systemd-analyze verify on every unit in dist/systemd, as make install
# writes them (@BINDIR@ pointing at the built binary). Any warning fails:
# systemd 252 exits 0 on unknown keys and bad values and only prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing: apt-get install systemd" >&2; exit 1; }
[ -x bin/updatectl ] || { echo "bin/updatectl missing: make build" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
DESTDIR=$W PREFIX=/usr CLASH_PATH=/nonexistent bash dist/install.sh >/dev/null
# The units name $BINDIR/twinroot; verify resolves it on the host, so point
# it at the staged copy.
mkdir -p "$W/units"
for f in "$W"/usr/lib/systemd/system/*; do
	sed "s|/usr/bin/twinroot|$W/usr/bin/twinroot|g" "$f" > "$W/units/$(basename "$f")"
done
n=$(ls "$W/units" | wc -l)
[ "$n" -ge 4 ] || { echo "only $n units staged" >&2; exit 1; }
out=$(cd "$W/units" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./* 2>&1) || { echo "$out"; exit 1; }
# Lines about units other than ours (the host's) are not our business.
ours=$(grep -E 'twinroot-' <<<"$out" || true)
[ -z "$ours" ] || { echo "$ours"; exit 1; }
echo "systemd-analyze verify: $n units clean ($(systemd-analyze --version | head -1))"

# make install's name-clash handling: with another updatectl on the path, ours is
# not installed under that name; without one, it is.
mkdir -p "$W/other"
printf '#!/bin/sh\necho "systemd 257"\n' > "$W/other/updatectl"; chmod +x "$W/other/updatectl"
D2=$W/d2
msg=$(DESTDIR=$D2 PREFIX=/usr CLASH_PATH=$W/other bash dist/install.sh)
grep -q "is another tool" <<<"$msg" || { echo "clash not detected: $msg"; exit 1; }
[ ! -e "$D2/usr/bin/updatectl" ] && [ -x "$D2/usr/bin/twinroot" ] || { echo "clash: wrong files"; exit 1; }
D3=$W/d3
msg=$(DESTDIR=$D3 PREFIX=/usr CLASH_PATH=/nonexistent bash dist/install.sh)
[ "$(readlink "$D3/usr/bin/updatectl")" = twinroot ] || { echo "no clash: updatectl not linked: $msg"; exit 1; }
# Installing again over our own link is not a clash.
msg=$(DESTDIR=$D3 PREFIX=/usr CLASH_PATH=/usr/bin bash dist/install.sh)
grep -q "the name is free" <<<"$msg" || { echo "reinstall saw a clash with itself: $msg"; exit 1; }
echo "make install: name clash detected and avoided; updatectl linked where free"
