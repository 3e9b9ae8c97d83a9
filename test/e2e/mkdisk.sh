#!/usr/bin/env bash
# mkdisk.sh — a raw GPT disk image for the e2e guest: an ESP (vfat, built with
# dosfstools and mtools, since the development kernel has no vfat) and an ext4
# root partition, each optionally filled from a host directory.
#
# Usage: test/e2e/mkdisk.sh [options] OUT
#   --size MIB          whole disk (default 4096; the file is sparse)
#   --esp-size MIB      ESP size (default 256)
#   --label PREFIX      partition names PREFIXesp and PREFIXroot (default none:
#                       "esp" and "root")
#   --root-uuid UUID    the root file system's UUID (default random)
#   --verity            make the root file system with -O verity
#   --esp-from DIR      copy DIR's contents into the ESP
#   --root-from DIR...  copy the overlay of these directories (top first) into the
#                       root file system (mkfs.ext4 -d keeps owners, modes,
#                       xattrs and hardlinks)
# The root file system is written in place at its partition's offset
# (mkfs.ext4 -E offset), the ESP through mtools' IMAGE@@OFFSET, so nothing is
# mounted on the host but a read-only overlay in a private mount namespace.
set -euo pipefail
SIZE=4096 ESP=256 PREFIX= UUID= VERITY= ESP_FROM= ROOT_FROM=()
while [ $# -gt 1 ]; do
	case $1 in
	--size) SIZE=$2; shift 2 ;;
	--esp-size) ESP=$2; shift 2 ;;
	--label) PREFIX=$2; shift 2 ;;
	--root-uuid) UUID=$2; shift 2 ;;
	--verity) VERITY=1; shift ;;
	--esp-from) ESP_FROM=$2; shift 2 ;;
	--root-from)
		shift
		while [ $# -gt 1 ] && [ "${1#--}" = "$1" ]; do ROOT_FROM+=("$1"); shift; done
		;;
	*) echo "mkdisk: unknown option $1" >&2; exit 2 ;;
	esac
done
[ $# = 1 ] || { echo "usage: mkdisk.sh [options] OUT" >&2; exit 2; }
OUT=$1
for tool in sfdisk mkfs.vfat mcopy mmd mkfs.ext4 unshare; do
	command -v "$tool" >/dev/null || { echo "mkdisk: $tool not found (run 'make deps')" >&2; exit 1; }
done

rm -f "$OUT"
truncate -s "${SIZE}M" "$OUT"
# 1 MiB alignment; the backup GPT takes the last 33 sectors.
esp_start=2048
esp_sectors=$((ESP * 2048))
root_start=$((esp_start + esp_sectors))
root_sectors=$((SIZE * 2048 - root_start - 2048))
sfdisk -q "$OUT" <<EOF
label: gpt
start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="${PREFIX}esp"
start=$root_start, size=$root_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="${PREFIX}root"
EOF

# The ESP: FAT32 at its offset (sectors), then the files through mtools.
# (It warns that the file is larger than the count it is given: that is the point.)
out=$(mkfs.vfat -F 32 -s 1 -n "$(echo "${PREFIX}ESP" | tr a-z- A-Z_ | cut -c1-11)" --offset=$esp_start \
	"$OUT" $((ESP * 1024)) 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$ESP_FROM" ]; then
	img="$OUT@@$((esp_start * 512))"
	(cd "$ESP_FROM" && find . -mindepth 1 -type d | LC_ALL=C sort | while read -r d; do
		MTOOLS_SKIP_CHECK=1 mmd -i "$img" "::/${d#./}"
	done
	find . -type f | LC_ALL=C sort | while read -r f; do
		MTOOLS_SKIP_CHECK=1 mcopy -i "$img" "$f" "::/${f#./}"
	done)
fi

# The root file system, in place.
args=(-q -F -t ext4 -b 4096 -E "offset=$((root_start * 512)),nodiscard" -L "${PREFIX}root")
[ -n "$UUID" ] && args+=(-U "$UUID")
[ -n "$VERITY" ] && args+=(-O verity)
blocks=$((root_sectors / 8))
if [ ${#ROOT_FROM[@]} = 0 ]; then
	mkfs.ext4 "${args[@]}" "$OUT" "$blocks"
elif [ ${#ROOT_FROM[@]} = 1 ]; then
	mkfs.ext4 "${args[@]}" -d "${ROOT_FROM[0]}" "$OUT" "$blocks"
else
	lower=$(IFS=:; echo "${ROOT_FROM[*]}")
	m=$(mktemp -d)
	unshare --mount --propagation private --fork -- /bin/sh -ec '
		m=$1 lower=$2; shift 2
		mount -t overlay overlay -o "ro,lowerdir=$lower" "$m"
		mkfs.ext4 -d "$m" "$@"
	' mkdisk "$m" "$lower" "${args[@]}" "$OUT" "$blocks"
	rmdir "$m"
fi
