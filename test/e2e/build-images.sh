#!/usr/bin/env bash
# build-images.sh — the three bootc-style OS images of the end-to-end scenario,
# built from Debian packages and packed as one OCI layout.
#
# Usage: test/e2e/build-images.sh
# Prints, as its last line on stdout, the OCI layout directory. It holds the
# tags v1, v2 and v3:
#   v1  Debian trixie (debootstrap --variant=minbase) with systemd, systemd-boot-efi,
#       linux-image-amd64 and initramfs-tools (layer 1, "base"), plus twinroot's
#       pieces from this checkout: bin/updatectl, bin/twinroot-setup-root and its
#       initramfs-tools hook and the systemd units under dist/, the e2e driver unit,
#       registries.conf and kernel arguments, and the initramfs regenerated with
#       the hook (layer 2, "twinroot").
#   v2  v1 plus one layer: the package `hello` and a changed default in
#       /etc/twinroot-e2e/defaults.conf.
#   v3  v1 plus one layer: a unit that fails before boot-complete.target and
#       reboots, so v3 never boots to completion.
# Each image is labelled containers.bootc=1 and org.opencontainers.image.version,
# keeps its kernel and initramfs at /usr/lib/modules/<kver>/{vmlinuz,initramfs.img}
# and its kernel arguments in /usr/lib/bootc/kargs.d/.
#
# The layers are built in a private mount namespace (unshare), each as the
# upper directory of an overlay over the layers below it, so a layer holds
# exactly what its step changed (deletions as overlay whiteouts, which mkoci
# -overlay turns into OCI whiteouts). v2 and v3 share v1's layers, so v1 → v2
# fetches only the new layer.
#
# Cache: $TWINROOT_E2E_CACHE (default /var/cache/twinroot-e2e), outside the
# repository. Every stage is keyed by a hash of its inputs (the stage below,
# the recipe, the files it copies) and rebuilt only when they change. Runs
# serialise on a flock. The mirror is the one the system's apt sources use
# (override with TWINROOT_E2E_MIRROR); the system's own apt configuration is
# never read beyond that nor written.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

CACHE=${TWINROOT_E2E_CACHE:-/var/cache/twinroot-e2e}
SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# The base image's packages. systemd-boot-efi (the EFI binary the boot partition
# gets) rather than systemd-boot, whose postinst runs bootctl and whose
# systemd-bless-boot would rename twinroot's entries behind its back.
PACKAGES=(systemd systemd-sysv udev dbus kmod e2fsprogs iproute2 systemd-boot-efi
	linux-image-amd64 initramfs-tools zstd)
# Module trees no QEMU guest needs; dropping them halves the image, and with it
# every pull, install and fsck under TCG.
DROP_MODULES=(drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media sound
	drivers/infiniband drivers/staging drivers/bluetooth net/bluetooth net/wireless
	net/mac80211 drivers/isdn drivers/scsi/qla2xxx drivers/scsi/lpfc drivers/scsi/mpt3sas
	drivers/usb/gadget drivers/iio drivers/hid drivers/input/touchscreen drivers/nfc
	drivers/net/can drivers/net/usb fs/ocfs2 fs/gfs2 drivers/mtd)
BASE_RECIPE="base 1 $SUITE ${PACKAGES[*]} drop ${DROP_MODULES[*]}"

log() { echo "build-images: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, overlay mounts)"
for tool in debootstrap unshare chroot mount flock sha256sum go; do
	command -v "$tool" >/dev/null || die "$tool not found (run 'make deps')"
done
[ -f "$KEYRING" ] || die "$KEYRING missing (install debian-archive-keyring)"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

# mirror prints the URI of the system's main Debian archive.
mirror() {
	if [ -n "${TWINROOT_E2E_MIRROR:-}" ]; then
		echo "$TWINROOT_E2E_MIRROR"
		return
	fi
	{
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -f "$f" ] || continue
			awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) print $i }' "$f"
		done
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*\/debian\/?$/) print $i }' "$f"
		done
	} | head -n1
}

# hash_of WORDS...: a short key over strings and (for existing paths) file contents.
hash_of() {
	local a
	for a in "$@"; do
		if [ -d "$a" ]; then
			(cd "$a" && find . -type f -o -type l | LC_ALL=C sort | while read -r f; do
				echo "$f"
				if [ -L "$f" ]; then readlink "$f"; else sha256sum <"$f"; stat -c %a "$f"; fi
			done)
		elif [ -f "$a" ]; then
			sha256sum <"$a"
		else
			echo "$a"
		fi
	done | sha256sum | cut -c1-16
}

# in_root ROOT CMD...: run CMD chrooted in ROOT inside a private mount
# namespace with /proc, /sys, /dev and the host's resolv.conf; every mount
# disappears with the namespace, whatever happens.
in_root() {
	local root=$1
	shift
	unshare --mount --propagation private --fork -- /bin/sh -ec '
		root=$1; shift
		mount -t proc proc "$root/proc"
		mount -t sysfs sys "$root/sys"
		mount --rbind /dev "$root/dev"
		mount -t tmpfs tmpfs "$root/run"
		mount -t tmpfs tmpfs "$root/tmp"
		if [ -e /etc/resolv.conf ]; then
			rm -f "$root/etc/resolv.conf"
			touch "$root/etc/resolv.conf.e2e"
			mount --bind -o ro /etc/resolv.conf "$root/etc/resolv.conf.e2e"
			ln -s resolv.conf.e2e "$root/etc/resolv.conf"
		fi
		rc=0
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive chroot "$root" "$@" || rc=$?
		umount -l "$root/etc/resolv.conf.e2e" 2>/dev/null || true
		rm -f "$root/etc/resolv.conf" "$root/etc/resolv.conf.e2e"
		exit $rc
	' in_root "$root" "$@"
}

# layer NAME LOWER... -- CMD...: make the cached layer NAME (an overlay upper
# directory) by running CMD with $MERGED set to the overlay of LOWER (top
# first) and the new upper. Prints the layer directory.
stage_dir=
layer() {
	local name=$1
	shift
	local lowers=()
	while [ "$1" != -- ]; do lowers+=("$1"); shift; done
	shift
	local dir="$CACHE/$name"
	if [ -f "$dir/complete" ]; then
		stage_dir=$dir
		return
	fi
	log "building layer $name"
	rm -rf "$dir" "$dir.tmp"
	mkdir -p "$dir.tmp/upper" "$dir.tmp/work" "$dir.tmp/merged"
	local lowerdir
	lowerdir=$(IFS=:; echo "${lowers[*]}")
	unshare --mount --propagation private --fork -- /bin/bash -ec '
		d=$1; lower=$2; shift 2
		mount -t overlay overlay -o "lowerdir=$lower,upperdir=$d/upper,workdir=$d/work,redirect_dir=off,metacopy=off,index=off,xino=off" "$d/merged"
		MERGED=$d/merged "$@"
	' layer "$dir.tmp" "$lowerdir" "$@"
	rm -rf "$dir.tmp/work" "$dir.tmp/merged"
	echo "$name" >"$dir.tmp/complete"
	mv "$dir.tmp" "$dir"
	stage_dir=$dir
}

# ---- layer 1: the Debian base ------------------------------------------------
MIRROR=$(mirror)
[ -n "$MIRROR" ] || die "no Debian mirror in the system's apt sources; set TWINROOT_E2E_MIRROR"
BASE_KEY=$(hash_of "$BASE_RECIPE" "$MIRROR")
BASE="$CACHE/base-$BASE_KEY"
if [ ! -f "$BASE/complete" ]; then
	log "debootstrap $SUITE from $MIRROR (a few minutes)"
	rm -rf "$BASE" "$BASE.tmp"
	mkdir -p "$BASE.tmp"
	pkgs=$(IFS=,; echo "${PACKAGES[*]}")
	debootstrap --variant=minbase --keyring="$KEYRING" --include="$pkgs" \
		"$SUITE" "$BASE.tmp/rootfs" "$MIRROR" >"$BASE.tmp/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $BASE.tmp/debootstrap.log"
	R=$BASE.tmp/rootfs
	kver=$(ls "$R/usr/lib/modules")
	[ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in $R/usr/lib/modules, found: $kver"
	for m in "${DROP_MODULES[@]}"; do rm -rf "$R/usr/lib/modules/$kver/kernel/$m"; done
	in_root "$R" depmod -a "$kver"
	# bootc layout: the kernel beside its modules, nothing under /boot.
	mv "$R/boot/vmlinuz-$kver" "$R/usr/lib/modules/$kver/vmlinuz"
	rm -f "$R"/boot/initrd.img-* "$R"/vmlinuz* "$R"/initrd.img* "$R"/boot/vmlinuz*
	# The initramfs: only what a QEMU guest needs, zstd; regenerated in layer 2.
	cat >"$R/etc/initramfs-tools/conf.d/twinroot-e2e.conf" <<-'EOF'
		MODULES=list
		COMPRESS=zstd
	EOF
	printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod ext4 erofs overlay loop \
		crc32c_generic >>"$R/etc/initramfs-tools/modules"
	echo e2e >"$R/etc/hostname"
	: >"$R/etc/machine-id"
	rm -f "$R/var/lib/dbus/machine-id"
	in_root "$R" apt-get clean
	rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/log/*.log \
		"$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
	echo "$kver" >"$BASE.tmp/kernel-version"
	echo "$BASE_RECIPE" >"$BASE.tmp/complete"
	mv "$BASE.tmp" "$BASE"
fi
KVER=$(cat "$BASE/kernel-version")
log "base: $BASE (kernel $KVER)"

# ---- layer 2: twinroot and the e2e guest pieces -------------------------------
for f in bin/updatectl bin/twinroot-setup-root; do
	[ -x "$REPO/$f" ] || die "$f missing (run 'make build')"
done
L2_RECIPE="twinroot 2 dosfstools"
L2_KEY=$(hash_of "$BASE_KEY" "$L2_RECIPE" "$REPO/bin/updatectl" "$REPO/bin/twinroot-setup-root" \
	"$REPO/dist" "$REPO/test/e2e/guest" "$REPO/Makefile" "$REPO/test/e2e/build-images.sh")
# build_twinroot: layer 2's step, run with MERGED the overlay over the base.
build_twinroot() {
	local M=$MERGED
	cp -a "$REPO/test/e2e/guest/." "$M/"
	mkdir -p "$M/sysroot"
	if [ -f "$REPO/dist/install.sh" ]; then
		# The updater's own install recipe: binaries and units as a user gets them.
		(cd "$REPO" && PREFIX=/usr DESTDIR="$M" CLASH_PATH=/usr/bin:/bin bash dist/install.sh >&2)
		for u in twinroot-finalize.service twinroot-bless-boot.service; do
			if [ -f "$M/usr/lib/systemd/system/$u" ]; then in_root "$M" systemctl enable "$u" >&2; fi
		done
	else
		install -D -m 0755 "$REPO/bin/updatectl" "$M/usr/bin/updatectl"
	fi
	# setup-root and its initramfs-tools hook (dist/initramfs-tools).
	install -D -m 0755 "$REPO/bin/twinroot-setup-root" "$M/usr/lib/twinroot/twinroot-setup-root"
	if [ -d "$REPO/dist/initramfs-tools" ]; then
		cp -a "$REPO/dist/initramfs-tools/." "$M/usr/share/initramfs-tools/"
	fi
	# fsck.fat for the ESP (fstab pass 2), as a Debian install has: a power cut
	# can leave a vfat directory half-made, which the kernel then reads as EIO.
	in_root "$M" /bin/sh -ec 'apt-get -q update >/dev/null
		apt-get -q install -y --no-install-recommends dosfstools >/dev/null
		apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log'
	# Timers a test guest only gets slower by.
	for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
		fstrim.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer; do
		ln -sf /dev/null "$M/etc/systemd/system/$u"
	done
	in_root "$M" mkinitramfs -o "/usr/lib/modules/$KVER/initramfs.img" "$KVER"
	[ -s "$M/usr/lib/modules/$KVER/initramfs.img" ] || die "mkinitramfs wrote no initramfs"
}
export -f build_twinroot in_root log die
export REPO KVER
layer "l2-$L2_KEY" "$BASE/rootfs" -- build_twinroot
L2=$stage_dir

# ---- v2 and v3: one layer each over v1 ----------------------------------------
V2_RECIPE="v2 1 hello greeting=v2"
V2_KEY=$(hash_of "$L2_KEY" "$V2_RECIPE")
build_v2() {
	in_root "$MERGED" /bin/sh -ec 'apt-get -q update >/dev/null
		apt-get -q install -y --no-install-recommends hello >/dev/null
		apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log'
	sed -i 's/^greeting=v1$/greeting=v2/' "$MERGED/etc/twinroot-e2e/defaults.conf"
	grep -qx greeting=v2 "$MERGED/etc/twinroot-e2e/defaults.conf" || die "v2 default not set"
}
V3_RECIPE="v3 1 bad-unit"
V3_KEY=$(hash_of "$L2_KEY" "$V3_RECIPE")
build_v3() {
	local u=$MERGED/usr/lib/systemd/system
	cat >"$u/twinroot-e2e-bad.service" <<-'EOF'
		[Unit]
		Description=twinroot e2e: the v3 image fails every boot before boot-complete.target
		Before=boot-complete.target
		FailureAction=reboot

		[Service]
		Type=oneshot
		ExecStart=/bin/sh -c 'echo "twinroot-e2e: v3 fails its boot" >/dev/console; exit 1'
	EOF
	mkdir -p "$u/boot-complete.target.requires" "$u/multi-user.target.wants"
	ln -s ../twinroot-e2e-bad.service "$u/boot-complete.target.requires/"
	ln -s ../twinroot-e2e-bad.service "$u/multi-user.target.wants/"
}
export -f build_v2 build_v3
layer "v2-$V2_KEY" "$L2/upper:$BASE/rootfs" -- build_v2
V2=$stage_dir
layer "v3-$V3_KEY" "$L2/upper:$BASE/rootfs" -- build_v3
V3=$stage_dir

# Layers of older recipes or checkouts.
for d in "$CACHE"/l2-* "$CACHE"/v2-* "$CACHE"/v3-* "$CACHE"/base-*; do
	case "$d" in
	"$L2" | "$V2" | "$V3" | "$BASE") ;;
	*) [ -d "$d" ] && rm -rf "$d" ;;
	esac
done

# ---- the OCI layout ------------------------------------------------------------
OCI=$CACHE/oci
MKOCI=$CACHE/mkoci
(cd "$REPO" && go build -o "$MKOCI" ./test/mkoci)
# pack TAG KEY ARGS...: run mkoci unless TAG was packed from KEY already.
pack() {
	local tag=$1 key=$2
	shift 2
	if [ "$(cat "$OCI/stamp-$tag" 2>/dev/null)" = "$key" ]; then
		return
	fi
	log "packing $tag"
	"$MKOCI" "$@" "$OCI" "$tag" "${LAYERS[@]}"
	echo "$key" >"$OCI/stamp-$tag"
}
if [ "$(cat "$OCI/stamp-base" 2>/dev/null)" != "$BASE_KEY" ]; then
	rm -rf "$OCI"
fi
LAYERS=("$BASE/rootfs")
pack base "$BASE_KEY"
LAYERS=("$L2/upper")
pack v1 "$L2_KEY" -from base -overlay -created 2026-01-01T00:00:00Z \
	-label containers.bootc=1 -label org.opencontainers.image.version=1
LAYERS=("$V2/upper")
pack v2 "$V2_KEY" -from v1 -overlay -created 2026-01-02T00:00:00Z -label org.opencontainers.image.version=2
LAYERS=("$V3/upper")
pack v3 "$V3_KEY" -from v1 -overlay -created 2026-01-03T00:00:00Z -label org.opencontainers.image.version=3
# The power-cut images: v2 plus a one-file layer each, versions 2.00 (the
# uncut trial that times the phases), 2.01, 2.02...,
# so every trial of step 5 has something new to fetch.
CUTS=${TWINROOT_E2E_CUTS:-20}
mkdir -p "$CACHE/cut-layers"
for i in $(seq -f %02g 0 "$CUTS"); do
	d=$CACHE/cut-layers/$i
	mkdir -p "$d/usr/share/twinroot-e2e"
	echo "power-cut image $i" >"$d/usr/share/twinroot-e2e/cut"
	touch -d 2026-01-02T00:00:00Z "$d/usr/share/twinroot-e2e/cut" "$d/usr/share/twinroot-e2e" "$d/usr/share" "$d/usr" "$d"
	LAYERS=("$d")
	pack "cut-$i" "$V2_KEY" -from v2 -created "2026-01-02T01:${i}:00Z" -label "org.opencontainers.image.version=2.$i"
done
echo "$CUTS" >"$OCI/cuts"
echo "$KVER" >"$OCI/kernel-version"
echo "$V2/upper" >"$OCI/v2-upper"
# The trees the disk builder needs: v1 as layers (lowest last, overlay order).
printf '%s\n' "$L2/upper" "$BASE/rootfs" >"$OCI/v1-layers"
log "images: $OCI (v1, v2, v3; kernel $KVER)"
echo "$OCI"
