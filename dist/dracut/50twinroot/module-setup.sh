#!/bin/bash
# dracut module "twinroot": puts twinroot-setup-root and its systemd unit
# into a systemd initramfs. The unit runs after sysroot.mount and before
# initrd-root-fs.target when the kernel command line has twinroot=.
# Install as /usr/lib/dracut/modules.d/50twinroot/ with the binary at
# /usr/lib/twinroot/twinroot-setup-root. The optional configuration
# (/etc/twinroot/setup-root.conf, else /usr/lib/twinroot/setup-root.conf,
# "verity = require|if-supported") becomes the initramfs's
# /etc/twinroot/setup-root.conf.

# Included whenever the binary is installed (a twinroot image wants it).
check() {
    require_binaries /usr/lib/twinroot/twinroot-setup-root || return 1
    return 0
}

depends() {
    echo systemd
    return 0
}

installkernel() {
    instmods erofs overlay loop
}

install() {
    local unit=twinroot-setup-root.service conf
    inst_binary /usr/lib/twinroot/twinroot-setup-root
    inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
    mkdir -p "${initdir}${systemdsystemunitdir}/initrd-root-fs.target.wants"
    ln_r "$systemdsystemunitdir/$unit" "$systemdsystemunitdir/initrd-root-fs.target.wants/$unit"
    for conf in /etc/twinroot/setup-root.conf /usr/lib/twinroot/setup-root.conf; do
        if [[ -e $conf ]]; then
            inst_simple "$conf" /etc/twinroot/setup-root.conf
            break
        fi
    done
}
