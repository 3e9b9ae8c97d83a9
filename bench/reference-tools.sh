#!/usr/bin/env bash
# reference-tools.sh — make the reference mkcomposefs available for side-by-side
# benchmarks. Debian bookworm has no composefs package; Debian forky has
# composefs 1.0.8. This fetches the packages (composefs, libcomposefs1 and the
# newer libc6/libssl3t64 they need) with apt through a private sources list
# under $CACHE (never the system's own sources or lists), unpacks them with
# dpkg-deb into $CACHE/root, and writes a wrapper $CACHE/bin/mkcomposefs that
# runs the binary through that root's own dynamic loader. Nothing is built
# and nothing lands in the repository.
#
# Usage: bench/reference-tools.sh   (prints the wrapper's directory last)
set -euo pipefail
CACHE=${TWINROOT_BENCH_CACHE:-/var/cache/twinroot-bench}/reference
SUITE=${TWINROOT_BENCH_SUITE:-forky}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
PKGS=(composefs libcomposefs1 libc6 libssl3t64 libzstd1)
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9
runs() { local out; out=$("$CACHE/bin/mkcomposefs" --help 2>&1 || true); [[ $out == *Usage:* ]]; }
if [ -x "$CACHE/bin/mkcomposefs" ] && runs; then
	echo "$CACHE/bin"
	exit 0
fi
uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
uri=${uri:-http://deb.debian.org/debian}
A=$CACHE/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$CACHE/debs"
echo "deb [arch=amd64 signed-by=$KEYRING] $uri $SUITE main" >"$A/sources.list"
O=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o APT::Architectures::=amd64
	-o APT::Sandbox::User=root -o Acquire::Languages=none
	-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
apt-get "${O[@]}" -q update >&2
(cd "$CACHE/debs" && apt-get "${O[@]}" -q download "${PKGS[@]}" >&2)
rm -rf "$CACHE/root" && mkdir -p "$CACHE/root" "$CACHE/bin"
for d in "$CACHE"/debs/*.deb; do dpkg-deb -x "$d" "$CACHE/root"; done
R=$CACHE/root
cat >"$CACHE/bin/mkcomposefs" <<EOS
#!/bin/sh
exec $R/usr/lib64/ld-linux-x86-64.so.2 --library-path $R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu $R/usr/bin/mkcomposefs "\$@"
EOS
cp "$CACHE/bin/mkcomposefs" "$CACHE/bin/composefs-info"
sed -i 's|/usr/bin/mkcomposefs|/usr/bin/composefs-info|' "$CACHE/bin/composefs-info"
chmod +x "$CACHE/bin/"*
runs || { echo "reference mkcomposefs does not run" >&2; exit 1; }
echo "$CACHE/bin"
