#!/usr/bin/env bash
# prepare-kernel.sh — fetch a kernel with fs-verity for the VM tests and build
# the base initramfs (busybox + the kernel modules the tests need).
#
# Usage: test/vm/prepare-kernel.sh
# Prints, as its last line on stdout, the directory that holds:
#   vmlinuz      the kernel image
#   base.cpio    newc archive: busybox, /lib/modules/*.ko, /lib/modules/load.list
#   kernel-version, config
#
# The kernel is Debian's linux-image-amd64 from suite $TWINROOT_VMTEST_SUITE
# (default trixie), fetched with apt through a private sources list, lists
# and cache under $TWINROOT_VMTEST_CACHE (default /var/cache/twinroot-vmtest);
# the system's own sources and lists are never read or written. The mirror is
# the one the system's apt sources already use for its own release (override
# with TWINROOT_VMTEST_MIRROR).
#
# Idempotent: once a kernel is prepared with the current recipe it exits
# without touching the network. Concurrent runs serialise on a flock. Set
# TWINROOT_VMTEST_REFRESH=1 to look for a newer kernel.
set -euo pipefail

CACHE=${TWINROOT_VMTEST_CACHE:-/var/cache/twinroot-vmtest}
SUITE=${TWINROOT_VMTEST_SUITE:-trixie}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Modules to load in the guest; their dependencies (modules.dep and softdeps)
# are added in load order. Names that are built into the kernel are skipped.
MODULES=(virtio_pci virtio_blk crc32c_generic crc32c-intel ext4 erofs overlay loop vfat nls_cp437 nls_ascii efivarfs
	sha256_generic sha512_generic)
# The recipe is part of the completion stamp: changing it rebuilds base.cpio.
RECIPE="v1 ${MODULES[*]}"

log() { echo "prepare-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb depmod modprobe xz cpio busybox flock; do
	command -v "$tool" >/dev/null || die "$tool not found (run 'make deps')"
done

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

# stamp_ok DIR: DIR holds a complete kernel prepared with this recipe.
stamp_ok() { [ -f "$1/complete" ] && [ "$(cat "$1/complete")" = "$RECIPE" ]; }

if [ -z "${TWINROOT_VMTEST_REFRESH:-}" ] && [ -f "$CACHE/current" ]; then
	cur="$CACHE/$(cat "$CACHE/current")"
	if stamp_ok "$cur"; then
		echo "$cur"
		exit 0
	fi
fi

# mirror prints the URI of the system's main archive (the stanza or line whose
# suite is the system's own codename).
mirror() {
	if [ -n "${TWINROOT_VMTEST_MIRROR:-}" ]; then
		echo "$TWINROOT_VMTEST_MIRROR"
		return
	fi
	local codename
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ -n "$codename" ] || die "cannot tell the system's codename; set TWINROOT_VMTEST_MIRROR"
	{
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -f "$f" ] || continue
			awk -v cn="$codename" '
				function flush() { if (ok && uri != "") print uri; uri = ""; ok = 0 }
				/^[ \t]*$/ { flush(); next }
				/^URIs:/ { uri = $2 }
				/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == cn) ok = 1 }
				END { flush() }' "$f"
		done
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			awk -v cn="$codename" '
				$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
					if ($(i + 1) == cn) print $i }' "$f"
		done
	} | head -n1
}

APTDIR="$CACHE/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$CACHE/debs"
APT_OPTS=(
	-o "Dir::Etc::SourceList=$APTDIR/sources.list"
	-o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$APTDIR/lists"
	-o "Dir::Cache=$APTDIR/cache"
	-o "APT::Architectures::=amd64"
	-o "APT::Sandbox::User=root"
	-o "Acquire::Languages=none"
	-o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
	-o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
	-o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
)

debfile=""
if [ -z "${TWINROOT_VMTEST_REFRESH:-}" ]; then
	# A kernel .deb already downloaded (e.g. only the recipe changed): reuse it.
	debfile=$(ls -1 "$CACHE"/debs/linux-image-*.deb 2>/dev/null | sort -V | tail -n1 || true)
fi
if [ -z "$debfile" ]; then
	uri=$(mirror)
	[ -n "$uri" ] || die "no Debian mirror found in the system's apt sources; set TWINROOT_VMTEST_MIRROR"
	[ -f "$KEYRING" ] || die "$KEYRING missing (install debian-archive-keyring)"
	echo "deb [arch=amd64 signed-by=$KEYRING] $uri $SUITE main" >"$APTDIR/sources.list"
	log "apt-get update ($SUITE)"
	apt-get "${APT_OPTS[@]}" -q update >&2 || die "apt-get update failed (does $KEYRING hold the $SUITE archive key? update debian-archive-keyring)"
	pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[ -n "$pkg" ] || die "cannot resolve linux-image-amd64 in $SUITE"
	log "downloading $pkg"
	(cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -q download "$pkg" >&2) || die "apt-get download $pkg failed"
	debfile=$(ls -1 "$CACHE/debs/${pkg}_"*.deb | sort -V | tail -n1)
	# Keep only the newest kernel package.
	for old in "$CACHE"/debs/*.deb; do
		[ "$old" = "$debfile" ] || rm -f "$old"
	done
fi

pkg=$(dpkg-deb -f "$debfile" Package)
kver=${pkg#linux-image-}
kdir="$CACHE/$kver"
if stamp_ok "$kdir"; then
	echo "$kver" >"$CACHE/current.tmp" && mv "$CACHE/current.tmp" "$CACHE/current"
	echo "$kdir"
	exit 0
fi

log "building $kdir from $(basename "$debfile")"
work="$CACHE/.build-$kver"
rm -rf "$work" "$kdir"
mkdir -p "$work/root" "$work/initramfs/bin" "$work/initramfs/lib/modules" "$kdir.tmp"
trap 'rm -rf "$work" "$kdir.tmp"' EXIT
dpkg-deb -x "$debfile" "$work/root"

moddir=""
for d in "$work/root/usr/lib/modules/$kver" "$work/root/lib/modules/$kver"; do
	[ -d "$d" ] && moddir=$d
done
[ -n "$moddir" ] || die "no modules directory for $kver in $debfile"
# modprobe -d wants <base>/lib/modules/<kver>.
base="$work/modbase"
mkdir -p "$base/lib/modules"
ln -s "$moddir" "$base/lib/modules/$kver"
depmod -b "$base" "$kver"

vmlinuz=$(ls "$work/root/boot/vmlinuz-$kver")
config="$work/root/boot/config-$kver"
for opt in CONFIG_FS_VERITY; do
	grep -q "^$opt=y" "$config" || die "$kver lacks $opt=y"
done

# Resolve load order: modprobe --show-depends prints "insmod PATH" lines,
# dependencies (and softdeps) first, and "builtin NAME" for built-ins.
: >"$work/initramfs/lib/modules/load.list"
declare -A seen=()
for m in "${MODULES[@]}"; do
	out=$(modprobe -d "$base" -S "$kver" --show-depends "$m" 2>/dev/null) || {
		log "module $m not found in $kver (skipped)"
		continue
	}
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		name=$(basename "$path")
		name=${name%.xz}
		name=${name%.zst}
		name=${name%.gz}
		[ -n "${seen[$name]:-}" ] && continue
		seen[$name]=1
		case "$path" in
		*.xz) xz -dc "$path" >"$work/initramfs/lib/modules/$name" ;;
		*.zst) zstd -dqc "$path" >"$work/initramfs/lib/modules/$name" ;;
		*.gz) gzip -dc "$path" >"$work/initramfs/lib/modules/$name" ;;
		*) cp "$path" "$work/initramfs/lib/modules/$name" ;;
		esac
		echo "$name" >>"$work/initramfs/lib/modules/load.list"
	done <<<"$out"
done

bb=$(command -v busybox)
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || die "$bb is not static (install busybox-static)"
cp "$bb" "$work/initramfs/bin/busybox"
for applet in $("$bb" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$work/initramfs/bin/$applet"
done
ln -s bin "$work/initramfs/sbin"
mkdir -p "$work/initramfs/proc" "$work/initramfs/sys" "$work/initramfs/dev" \
	"$work/initramfs/tmp" "$work/initramfs/mnt" "$work/initramfs/etc"

(cd "$work/initramfs" && find . -mindepth 1 | LC_ALL=C sort |
	cpio -o -H newc -R 0:0 --quiet) >"$kdir.tmp/base.cpio"
cp "$vmlinuz" "$kdir.tmp/vmlinuz"
cp "$config" "$kdir.tmp/config"
echo "$kver" >"$kdir.tmp/kernel-version"
cp "$work/initramfs/lib/modules/load.list" "$kdir.tmp/modules"
echo "$RECIPE" >"$kdir.tmp/complete"
sync -f "$kdir.tmp/complete"
mv "$kdir.tmp" "$kdir"
echo "$kver" >"$CACHE/current.tmp"
sync -f "$CACHE/current.tmp"
mv "$CACHE/current.tmp" "$CACHE/current"
# Drop other kernels' directories.
for d in "$CACHE"/*/; do
	d=${d%/}
	case "$(basename "$d")" in
	apt | debs | "$kver") ;;
	*) [ -f "$d/complete" ] && rm -rf "$d" ;;
	esac
done
log "ready: $kdir ($(wc -l <"$kdir/modules") modules)"
echo "$kdir"
