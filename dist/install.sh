#!/usr/bin/env bash
# make install: the binary as "twinroot", "updatectl" beside it where that
# name is free, man pages, completions, systemd units and the example config.
#
#   PREFIX   (default /usr/local)  where bin/, share/ and lib/systemd/ go
#   DESTDIR  (default empty)       staging root for packaging
#   BINDIR, UNITDIR, MANDIR, ...   override single directories
#
# Name clash: systemd >= 257 ships its own updatectl (systemd-sysupdate's
# client: list/check/update/vacuum). Ours is always installed as twinroot;
# the updatectl name is added only when no other updatectl is found, so
# neither tool shadows the other. What was done is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
MANDIR=${MANDIR:-$PREFIX/share/man}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
BASHCOMPDIR=${BASHCOMPDIR:-$PREFIX/share/bash-completion/completions}
ZSHCOMPDIR=${ZSHCOMPDIR:-$PREFIX/share/zsh/site-functions}
FISHCOMPDIR=${FISHCOMPDIR:-$PREFIX/share/fish/vendor_completions.d}
SYSCONFDIR=${SYSCONFDIR:-/etc}
# Where to look for another updatectl (the running system's, plus DESTDIR's).
CLASH_PATH=${CLASH_PATH:-/usr/bin:/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin:$BINDIR}

[ -x bin/updatectl ] || { echo "install: bin/updatectl missing; run make build first" >&2; exit 1; }
d() { echo "$DESTDIR$1"; }

install -d "$(d "$BINDIR")" "$(d "$UNITDIR")" "$(d "$MANDIR/man1")" \
	"$(d "$BASHCOMPDIR")" "$(d "$ZSHCOMPDIR")" "$(d "$FISHCOMPDIR")" "$(d "$SYSCONFDIR/twinroot")"
install -m 0755 bin/updatectl "$(d "$BINDIR")/twinroot"
echo "installed $(d "$BINDIR")/twinroot"

# Is "updatectl" someone else's? Ours is a symlink to twinroot or a binary
# whose version line says twinroot.
ours() { [ "$(readlink "$1" 2>/dev/null)" = twinroot ] || "$1" --version 2>/dev/null | grep -q '^updatectl version'; }
other=
IFS=: read -ra dirs <<<"$CLASH_PATH"
for dir in "${dirs[@]}"; do
	for root in "" "$DESTDIR"; do
		f=$root$dir/updatectl
		if [ -e "$f" ] || [ -L "$f" ]; then
			ours "$f" || { other=$f; break 2; }
		fi
	done
done
if [ -n "$other" ]; then
	echo "updatectl: $other is another tool (systemd >= 257 ships systemd-sysupdate's updatectl);"
	echo "           not installing ours under that name. Use 'twinroot' (same verbs and flags)."
else
	ln -sfn twinroot "$(d "$BINDIR")/updatectl"
	echo "installed $(d "$BINDIR")/updatectl -> twinroot (the name is free here)"
fi

for f in dist/systemd/*.service dist/systemd/*.timer; do
	sed "s|@BINDIR@|$BINDIR|g" "$f" > "$(d "$UNITDIR")/$(basename "$f")"
	chmod 0644 "$(d "$UNITDIR")/$(basename "$f")"
done
echo "installed units in $(d "$UNITDIR"): $(cd dist/systemd && echo *.service *.timer)"

if [ -d bin/man/man1 ]; then
	install -m 0644 bin/man/man1/*.1 "$(d "$MANDIR/man1")/"
	# twinroot(1) is updatectl(1) under the installed name.
	echo ".so man1/updatectl.1" > "$(d "$MANDIR/man1")/twinroot.1"
fi
if [ -d bin/completions ]; then
	install -m 0644 bin/completions/updatectl.bash "$(d "$BASHCOMPDIR")/updatectl"
	install -m 0644 bin/completions/_updatectl "$(d "$ZSHCOMPDIR")/_updatectl"
	install -m 0644 bin/completions/updatectl.fish "$(d "$FISHCOMPDIR")/updatectl.fish"
fi
# The example configuration is installed only when none exists: every key
# has a default, and an administrator's file is never overwritten.
if [ ! -e "$(d "$SYSCONFDIR/twinroot/config.toml")" ]; then
	install -m 0644 dist/twinroot/config.toml "$(d "$SYSCONFDIR/twinroot")/config.toml"
	echo "installed $(d "$SYSCONFDIR/twinroot")/config.toml (all keys commented: the defaults)"
fi
DESTDIR="$DESTDIR" bash dist/install-initramfs.sh # setup-root and its initramfs packaging
echo "enable with: systemctl enable --now twinroot-update.timer twinroot-finalize.service twinroot-bless-boot.service"
