#!/usr/bin/env bash
# dist/install-initramfs.sh (run by make install through dist/install.sh):
# twinroot-setup-root and the initramfs packaging that runs it, at the
# fixed paths the unit, the scripts and the initramfs generators use
# (PREFIX does not apply: dracut and initramfs-tools look only here):
#
#   /usr/lib/twinroot/twinroot-setup-root                  the static binary
#   /usr/lib/dracut/modules.d/50twinroot/                  dracut module + unit
#   /usr/share/initramfs-tools/hooks/twinroot              initramfs-tools hook
#   /usr/share/initramfs-tools/scripts/local-bottom/twinroot
#
# Both generators' files are installed; each uses only its own. Rebuild the
# initramfs afterwards (dracut -f, or update-initramfs -u). DESTDIR is a
# staging root for packaging.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
[ -x bin/twinroot-setup-root ] || { echo "install: bin/twinroot-setup-root missing; run make build first" >&2; exit 1; }
d() { echo "$DESTDIR$1"; }
install -d "$(d /usr/lib/twinroot)" "$(d /usr/lib/dracut/modules.d/50twinroot)" \
	"$(d /usr/share/initramfs-tools/hooks)" "$(d /usr/share/initramfs-tools/scripts/local-bottom)"
install -m 0755 bin/twinroot-setup-root "$(d /usr/lib/twinroot)/twinroot-setup-root"
install -m 0755 dist/dracut/50twinroot/module-setup.sh "$(d /usr/lib/dracut/modules.d/50twinroot)/"
install -m 0644 dist/dracut/50twinroot/twinroot-setup-root.service "$(d /usr/lib/dracut/modules.d/50twinroot)/"
install -m 0755 dist/initramfs-tools/hooks/twinroot "$(d /usr/share/initramfs-tools/hooks)/twinroot"
install -m 0755 dist/initramfs-tools/scripts/local-bottom/twinroot "$(d /usr/share/initramfs-tools/scripts/local-bottom)/twinroot"
echo "installed $(d /usr/lib/twinroot)/twinroot-setup-root, the dracut module 50twinroot and the initramfs-tools hook and local-bottom script; rebuild the initramfs to use them"
