package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// stepPrelude starts every step script: helpers whose lines the host parses.
const stepPrelude = `set -u
U=$(command -v updatectl || command -v twinroot || echo updatectl)
export U
E2E_FAILED=0
e2e_mark() { echo "E2E-MARK $*"; }
# check DESC CMD...: one pass/fail line; the command's output is shown on failure.
check() {
	d=$1; shift
	if "$@" >/run/e2e-check.out 2>&1; then echo "E2E-OK $d"; else echo "E2E-FAIL $d"; sed 's/^/    /' /run/e2e-check.out; E2E_FAILED=1; fi
}
# capture NAME CMD...: the command's output as a section the host reads, and its status.
capture() {
	n=$1; shift
	echo "E2E-BEGIN $n"; "$@" 2>&1; s=$?; echo "E2E-END $n"; echo "E2E-STATUS $n $s"
	return $s
}
finish() { exit "$E2E_FAILED"; }
`

// Guest-side references.
const (
	refStable = "docker://" + guestRegistry + "/e2e/os:stable"
	refV3     = "docker://" + guestRegistry + "/e2e/os:v3"
)

// outcome is one row of the final table.
type outcome struct {
	id, title string
	status    string // PASS, FAIL, SKIP
	dur       time.Duration
	notes     []string
}

// run is one scenario run.
type run struct {
	c       config
	verbs   map[string]bool
	rows    []*outcome
	target  *machine
	log     io.Writer
	metrics []string

	installed   bool
	upgradeWall time.Duration // step 2, from the guest's upgrade start to its end
	shutdown    time.Duration // step 2, from the end of upgrade until QEMU exited
}

func newRun(c config) *run {
	r := &run{c: c, verbs: verbs(c.updatectl), log: os.Stderr}
	return r
}

func (r *run) logf(format string, a ...any) {
	fmt.Fprintf(r.log, "e2e: "+format+"\n", a...)
}

// row starts a table row.
func (r *run) row(id, title string) *outcome {
	o := &outcome{id: id, title: title, status: "PASS"}
	r.rows = append(r.rows, o)
	r.logf("step %s: %s", id, title)
	return o
}

func (o *outcome) fail(format string, a ...any) {
	o.status = "FAIL"
	o.notes = append(o.notes, fmt.Sprintf(format, a...))
}

func (o *outcome) note(format string, a ...any) {
	o.notes = append(o.notes, fmt.Sprintf(format, a...))
}

func (o *outcome) skip(format string, a ...any) {
	o.status = "SKIP"
	o.notes = append(o.notes, fmt.Sprintf(format, a...))
}

func (r *run) failed() bool {
	return slices.ContainsFunc(r.rows, func(o *outcome) bool { return o.status == "FAIL" })
}

// missing returns the verbs of want the host's updatectl lacks.
func (r *run) missing(want ...string) []string {
	var m []string
	for _, v := range want {
		if !r.verbs[v] {
			m = append(m, v)
		}
	}
	return m
}

// checks copies the guest's E2E-OK/E2E-FAIL lines into the row.
func checks(o *outcome, res bootResult) {
	for _, l := range strings.Split(res.Output, "\n") {
		switch {
		case strings.HasPrefix(l, "E2E-FAIL "):
			o.fail("guest: %s", strings.TrimPrefix(l, "E2E-FAIL "))
		case strings.HasPrefix(l, "E2E-OK "):
			o.note("ok: %s", strings.TrimPrefix(l, "E2E-OK "))
		}
	}
}

// section returns the output the guest captured under name, and its status
// (-1 if the section is missing).
func section(out, name string) (string, int) {
	begin, end := "E2E-BEGIN "+name+"\n", "\nE2E-END "+name+"\n"
	i := strings.Index(out, begin)
	if i < 0 {
		return "", -1
	}
	rest := out[i+len(begin):]
	j := strings.Index(rest, end)
	if j < 0 {
		return rest, -1
	}
	status := -1
	fmt.Sscanf(rest[j+len(end):], "E2E-STATUS "+name+" %d", &status)
	return rest[:j], status
}

// host is the part of updatectl's status --json the scenario looks at.
type host struct {
	Status struct {
		Booted   *entry  `json:"booted"`
		Staged   *entry  `json:"staged"`
		Rollback *entry  `json:"rollback"`
		Default  *entry  `json:"default"`
		Other    []entry `json:"other"`
		Store    struct {
			Images int  `json:"images"`
			Verity bool `json:"verity"`
		} `json:"store"`
	} `json:"status"`
}

type entry struct {
	ID    string `json:"id"`
	Image struct {
		Image struct {
			Image string `json:"image"`
		} `json:"image"`
		Version         string `json:"version"`
		ComposefsDigest string `json:"composefsDigest"`
	} `json:"image"`
	Boot *struct {
		Entry     string `json:"entry"`
		TriesLeft *int   `json:"triesLeft"`
		Blessed   bool   `json:"blessed"`
	} `json:"boot"`
}

func (e *entry) bootString() string {
	if e == nil || e.Boot == nil {
		return "no boot entry"
	}
	left := "?"
	if e.Boot.TriesLeft != nil {
		left = fmt.Sprint(*e.Boot.TriesLeft)
	}
	return fmt.Sprintf("entry %s, tries left %s, blessed %v", e.Boot.Entry, left, e.Boot.Blessed)
}

func (e *entry) version() string {
	if e == nil {
		return "none"
	}
	return e.Image.Version
}

// all lists every deployment status names.
func (h host) all() []entry {
	var es []entry
	for _, e := range []*entry{h.Status.Booted, h.Status.Staged, h.Status.Rollback, h.Status.Default} {
		if e != nil && !slices.ContainsFunc(es, func(x entry) bool { return x.ID == e.ID }) {
			es = append(es, *e)
		}
	}
	for _, e := range h.Status.Other {
		if !slices.ContainsFunc(es, func(x entry) bool { return x.ID == e.ID }) {
			es = append(es, e)
		}
	}
	return es
}

// status parses the section name holding `updatectl status --json`.
func status(res bootResult, name string) (host, error) {
	var h host
	s, code := section(res.Output, name)
	if code != 0 {
		return h, fmt.Errorf("status --json exited %d: %s", code, strings.TrimSpace(s))
	}
	// Warnings go to stderr, which the section holds too: the document
	// starts at the first line that opens an object.
	doc := s
	if i := strings.Index(s, "\n{"); i >= 0 && !strings.HasPrefix(s, "{") {
		doc = s[i+1:]
	}
	if err := json.Unmarshal([]byte(doc), &h); err != nil {
		return h, fmt.Errorf("status --json: %w: %s", err, lastLines(s, 3))
	}
	return h, nil
}

// scenario runs the selected steps in order; a step whose prerequisites
// failed or are not on main yet is skipped, saying why.
func (r *run) scenario(ctx context.Context) {
	r.logf("host updatectl verbs: %s", strings.Join(sortedKeys(r.verbs), " "))
	if r.c.want("H") || r.c.want("1") {
		r.harness(ctx)
	}
	steps := []struct {
		id, title string
		needs     []string
		fn        func(context.Context, *outcome)
	}{
		{"1", "v1 boots via systemd-boot: status, composefs verity=require, blessed; local /etc and /var edits", []string{"status"}, r.step1},
		{"2", "upgrade --apply → v2: package, /etc merge kept + new default, /var kept, blessed; bytes fetched", []string{"upgrade", "status"}, r.step2},
		{"3", "switch to v3: its boots fail, systemd-boot falls back to v2, status reports v3 failed", []string{"switch", "status"}, r.step3},
		{"4", "rollback --apply → v1; again → v2", []string{"rollback", "status"}, r.step4},
		{"6", "tampering: a flipped byte of a booted object gives EIO; fsck names the object", []string{"fsck"}, r.step6},
		{"7", "gc in the booted system keeps booted/staged/rollback; the system keeps working", []string{"gc", "status", "fsck"}, r.step7},
		{"5", fmt.Sprintf("power cuts: %d seeded points during upgrade and finalize; every boot on a complete deployment, fsck clean", r.c.cuts), []string{"upgrade", "status", "fsck"}, r.step5},
	}
	for _, s := range steps {
		if !r.c.want(s.id) {
			continue
		}
		o := r.row(s.id, s.title)
		if ctx.Err() != nil {
			o.skip("interrupted")
			continue
		}
		if !r.installed {
			o.skip("needs v1 installed on the GPT disk (step I)")
			continue
		}
		if m := r.missing(s.needs...); len(m) > 0 {
			o.skip("updatectl lacks %s (not on main yet)", strings.Join(m, ", "))
			continue
		}
		start := time.Now()
		s.fn(ctx, o)
		o.dur = time.Since(start)
	}
}

func sortedKeys(m map[string]bool) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	slices.Sort(k)
	return k
}

// harnessScript checks the plain boot and, where updatectl can, installs v1
// onto the second disk from the registry.
const harnessScript = `
check "kernel is Debian's 6.12" sh -c 'uname -r | grep -q "^6\.12\."'
check "systemd is PID 1" sh -c 'test "$(cat /proc/1/comm)" = systemd'
check "root is the plain ext4 partition" sh -c 'test "$(findmnt -no FSTYPE /)" = ext4'
check "booted by systemd-boot" sh -c 'test -e /sys/firmware/efi/efivars/LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f'
# Two connections open at once through the guestfwd relays.
check "registry reachable through guestfwd, two connections at once" bash -c '
	exec 3<>/dev/tcp/10.0.2.100/5000 4<>/dev/tcp/10.0.2.100/5000
	printf "GET /v2/ HTTP/1.0\r\n\r\n" >&4; head -n1 <&4 | grep " 200 "
	printf "GET /v2/ HTTP/1.0\r\n\r\n" >&3; head -n1 <&3 | grep " 200 "'
capture blame systemd-analyze blame
`

// installScript installs v1 from the registry onto the second disk.
const installScript = `
umount /boot 2>/dev/null || true
mkdir -p /mnt/sysroot /mnt/boot
check "target root partition mounts" mount /dev/disk/by-partlabel/root /mnt/sysroot
check "target ESP mounts (vfat in the guest kernel)" mount -t vfat /dev/disk/by-partlabel/esp /mnt/boot
e2e_mark install-start
capture install "$U" --sysroot /mnt/sysroot --boot /mnt/boot install --efi-dir /usr/lib/systemd/boot/efi "$REF"
e2e_mark install-end
capture status "$U" --sysroot /mnt/sysroot --boot /mnt/boot status --json
capture esp find /mnt/boot -type f
capture entries sh -c 'for f in /mnt/boot/loader/entries/*.conf; do echo "== $f"; cat "$f"; done'
check "objects are sealed with fs-verity" sh -c 'f=$(find /mnt/sysroot/twinroot/objects -type f -print -quit); "$U" verity measure "$f"'
sync
umount /mnt/boot /mnt/sysroot
finish
`

// harness is the proof that the machinery works without twinroot: v1's
// tree on a plain ext4 root booted through OVMF, systemd-boot and a
// hand-written BLS entry (row H); then, when updatectl can install, that same
// guest installs v1 onto the empty GPT disk (row I).
func (r *run) harness(ctx context.Context) {
	o := r.row("H", "harness: OVMF → systemd-boot → hand-written BLS entry → 6.12 kernel + initramfs → systemd on plain ext4")
	oi := r.row("I", "install: updatectl install of v1 from the registry onto the GPT disk, inside the booted v1 guest")
	canInstall := len(r.missing("install")) == 0
	// The target disk is attached even when nothing is installed: the
	// image's fstab mounts its ESP (PARTLABEL=esp) at /boot.
	disks := []string{r.c.installer, r.c.target}
	script := harnessScript
	if canInstall {
		script += "REF=" + refStable + "\n" + installScript
	} else {
		script += "finish\n"
	}
	m, err := newMachine(filepath.Join(r.c.work, "installer"), r.c.port, r.c.accel, disks...)
	if err != nil {
		o.fail("%v", err)
		return
	}
	if r.c.console {
		m.consoleW = os.Stderr
	}
	if canInstall {
		if err := skopeoTag(ctx, r.c.port, "v1", "stable"); err != nil {
			o.fail("%v", err)
			return
		}
	}
	start := time.Now()
	res, err := m.boot(ctx, bootOptions{Script: script})
	o.dur = time.Since(start)
	if err != nil {
		o.fail("%v", err)
		oi.skip("the installer guest did not run")
		return
	}
	if res.Up == 0 {
		o.fail("the boot never reached the driver (console: %s)", res.Console)
	}
	o.note("boot to login prompt %s, to multi-user (driver up) %s, whole run %s", loginTime(res), secs(res.Up), secs(res.Duration))
	r.metrics = append(r.metrics, fmt.Sprintf("plain ext4 boot under %s: login prompt after %s, driver after %s", r.c.accel, loginTime(res), secs(res.Up)))
	// Rows H and I share one boot: split the checks by what they are about.
	for _, l := range strings.Split(res.Output, "\n") {
		target := o
		if strings.Contains(l, "target") || strings.Contains(l, "sealed") {
			target = oi
		}
		switch {
		case strings.HasPrefix(l, "E2E-FAIL "):
			target.fail("guest: %s", strings.TrimPrefix(l, "E2E-FAIL "))
		case strings.HasPrefix(l, "E2E-OK "):
			target.note("ok: %s", strings.TrimPrefix(l, "E2E-OK "))
		}
	}
	if !canInstall {
		oi.skip("updatectl lacks install (not on main yet)")
		return
	}
	oi.dur = res.Marks["install-end"] - res.Marks["install-start"]
	if out, code := section(res.Output, "install"); code != 0 {
		oi.fail("updatectl install exited %d: %s", code, lastLines(out, 8))
		return
	}
	if res.RC != 0 {
		oi.fail("install script exited %d", res.RC)
		return
	}
	h, err := status(res, "status")
	if err != nil {
		oi.fail("%v", err)
		return
	}
	if h.Status.Default.version() != "1" {
		oi.fail("default deployment after install has version %q, want 1", h.Status.Default.version())
		return
	}
	oi.note("install wall time in the guest: %s", secs(oi.dur))
	if s, _ := section(res.Output, "entries"); s != "" {
		oi.note("entries: %s", strings.Join(strings.Fields(s), " "))
	}
	r.installed = oi.status == "PASS"
	r.target, err = newMachine(filepath.Join(r.c.work, "target"), r.c.port, r.c.accel, r.c.target)
	if err != nil {
		oi.fail("%v", err)
		r.installed = false
	}
	if r.target != nil && r.c.console {
		r.target.consoleW = os.Stderr
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// bootTarget boots the installed machine until a boot completes (at most
// four boots: a deployment that fails its boots is left by systemd-boot after
// its tries), runs script in that boot and notes the failed boots before it.
func (r *run) bootTarget(ctx context.Context, o *outcome, script string) (bootResult, bool) {
	var res bootResult
	for failed := 0; failed < 4; failed++ {
		var err error
		res, err = r.target.boot(ctx, bootOptions{Script: script})
		if err != nil {
			o.fail("%v", err)
			return res, false
		}
		if res.Up != 0 {
			if failed > 0 {
				o.fail("%d boots failed before one completed (last failed console: boot %d)", failed, r.target.boots-1)
			}
			return res, true
		}
	}
	o.fail("4 boots never reached the driver (console: %s)", res.Console)
	return res, false
}

const step1Script = `
capture status "$U" status --json
capture root findmnt -no FSTYPE,OPTIONS /
check "root is an overlay with verity=require" sh -c 'findmnt -no FSTYPE,OPTIONS / | grep -q "^overlay .*verity=require"'
check "the image's /usr is there" test -x /usr/lib/systemd/systemd
echo "a local edit" >>/etc/motd
echo "kept across upgrades" >/var/e2e-file
sync
check "local /etc/motd edit and /var file written" sh -c 'grep -q "a local edit" /etc/motd && test -s /var/e2e-file'
# The boot-to-login time needs the serial getty's prompt on the console:
# the driver can be done before it is printed.
i=0; while ! systemctl -q is-active serial-getty@ttyS0.service && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done; sleep 2
finish
`

// loginTime is when the console showed the login prompt, or says it never
// did.
func loginTime(res bootResult) string {
	if res.Login == 0 {
		return "(no prompt seen)"
	}
	return secs(res.Login)
}

func (r *run) step1(ctx context.Context, o *outcome) {
	res, ok := r.bootTarget(ctx, o, step1Script)
	if !ok {
		return
	}
	checks(o, res)
	o.note("boot to login prompt %s, to driver %s", loginTime(res), secs(res.Up))
	r.metrics = append(r.metrics, fmt.Sprintf("v1 composefs boot under %s: login prompt after %s, driver after %s", r.c.accel, loginTime(res), secs(res.Up)))
	h, err := status(res, "status")
	if err != nil {
		o.fail("%v", err)
		return
	}
	b := h.Status.Booted
	switch {
	case b == nil:
		o.fail("status shows nothing booted")
	case b.version() != "1":
		o.fail("booted version %q, want 1", b.version())
	case b.Boot == nil || !b.Boot.Blessed:
		o.fail("booted entry not blessed: %s", b.bootString())
	default:
		o.note("booted %s (v1), entry %s blessed", b.ID, b.Boot.Entry)
	}
}

const step2UpgradeScript = `
e2e_mark upgrade-start
if capture upgrade "$U" upgrade --apply; then
	e2e_mark upgrade-end
	# --apply has asked for the reboot; the finalize runs at shutdown.
	touch /run/twinroot-e2e-keep-running
	sleep 600
fi
exit 1
`

const step2CheckScript = `
capture status "$U" status --json
check "v2's package runs" hello
check "the local /etc/motd edit is kept" grep -q "a local edit" /etc/motd
check "the /var file is kept" grep -q "kept across upgrades" /var/e2e-file
check "v2's new /etc default is there" grep -qx greeting=v2 /etc/twinroot-e2e/defaults.conf
finish
`

func (r *run) step2(ctx context.Context, o *outcome) {
	if err := skopeoTag(ctx, r.c.port, "v2", "stable"); err != nil {
		o.fail("%v", err)
		return
	}
	before, _ := relayBytes(r.target.countFile())
	res, err := r.target.boot(ctx, bootOptions{Script: step2UpgradeScript})
	if err != nil {
		o.fail("%v", err)
		return
	}
	if out, code := section(res.Output, "upgrade"); code != 0 {
		o.fail("updatectl upgrade --apply exited %d: %s", code, lastLines(out, 8))
		return
	}
	after, conns := relayBytes(r.target.countFile())
	r.upgradeWall = res.Marks["upgrade-end"] - res.Marks["upgrade-start"]
	r.shutdown = res.Duration - res.Marks["upgrade-end"]
	fetched := after - before
	layer, whole := r.layerSizes("v2")
	o.note("upgrade --apply wall %s (with --apply the finalize runs in it), then a %s shutdown; fetched %d bytes over %d connections (v2's new layer %d bytes, whole v2 %d bytes)",
		secs(r.upgradeWall), secs(r.shutdown), fetched, conns, layer, whole)
	r.metrics = append(r.metrics, fmt.Sprintf("upgrade --apply v1→v2: wall %s in the guest (finalize included), shutdown %s; %d bytes fetched from the registry for a %d-byte new layer (whole image %d bytes)",
		secs(r.upgradeWall), secs(r.shutdown), fetched, layer, whole))
	if layer > 0 && fetched > layer+256<<10 {
		o.fail("fetched %d bytes, more than the new layer (%d) plus manifests", fetched, layer)
	}
	res, ok := r.bootTarget(ctx, o, step2CheckScript)
	if !ok {
		return
	}
	checks(o, res)
	h, err := status(res, "status")
	if err != nil {
		o.fail("%v", err)
		return
	}
	if b := h.Status.Booted; b.version() != "2" || b.Boot == nil || !b.Boot.Blessed {
		o.fail("booted %q (blessed %v), want v2 blessed", b.version(), b != nil && b.Boot != nil && b.Boot.Blessed)
	}
}

// layerSizes returns the compressed size of the top layer of tag and of
// all its layers, from the OCI layout.
func (r *run) layerSizes(tag string) (top, all int64) {
	idx, err := os.ReadFile(filepath.Join(r.c.oci, "index.json"))
	if err != nil {
		return 0, 0
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if json.Unmarshal(idx, &index) != nil {
		return 0, 0
	}
	for _, d := range index.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		data, err := os.ReadFile(filepath.Join(r.c.oci, "blobs", strings.Replace(d.Digest, ":", "/", 1)))
		if err != nil {
			return 0, 0
		}
		var m struct {
			Layers []struct {
				Size int64 `json:"size"`
			} `json:"layers"`
		}
		if json.Unmarshal(data, &m) != nil || len(m.Layers) == 0 {
			return 0, 0
		}
		for _, l := range m.Layers {
			all += l.Size
		}
		return m.Layers[len(m.Layers)-1].Size, all
	}
	return 0, 0
}

const step3SwitchScript = `
if capture switch "$U" switch --apply ` + refV3 + `; then
	touch /run/twinroot-e2e-keep-running
	sleep 600
fi
exit 1
`

const statusScript = `
capture status "$U" status --json
finish
`

func (r *run) step3(ctx context.Context, o *outcome) {
	res, err := r.target.boot(ctx, bootOptions{Script: step3SwitchScript})
	if err != nil {
		o.fail("%v", err)
		return
	}
	if out, code := section(res.Output, "switch"); code != 0 {
		o.fail("updatectl switch --apply exited %d: %s", code, lastLines(out, 8))
		return
	}
	failed := 0
	for range 6 {
		res, err = r.target.boot(ctx, bootOptions{Script: statusScript})
		if err != nil {
			o.fail("%v", err)
			return
		}
		if res.Up != 0 {
			break
		}
		failed++
	}
	o.note("%d failed boots before a boot completed", failed)
	if res.Up == 0 {
		o.fail("no boot completed after %d tries", failed)
		return
	}
	h, err := status(res, "status")
	if err != nil {
		o.fail("%v", err)
		return
	}
	if v := h.Status.Booted.version(); v != "2" {
		o.fail("booted %q after v3 failed, want 2", v)
	}
	var v3 *entry
	for _, e := range h.all() {
		if e.version() == "3" {
			v3 = &e
		}
	}
	switch {
	case v3 == nil:
		o.fail("status no longer lists v3")
	case v3.Boot == nil || v3.Boot.Blessed || v3.Boot.TriesLeft == nil || *v3.Boot.TriesLeft != 0:
		o.fail("status does not report v3 as failed: %s", v3.bootString())
	default:
		o.note("status: v3 (%s) entry %s, 0 tries left, not blessed", v3.ID, v3.Boot.Entry)
	}
}

const rollbackScript = `
if capture rollback "$U" rollback --apply; then
	touch /run/twinroot-e2e-keep-running
	sleep 600
fi
exit 1
`

func (r *run) step4(ctx context.Context, o *outcome) {
	for i, want := range []string{"1", "2"} {
		res, err := r.target.boot(ctx, bootOptions{Script: rollbackScript})
		if err != nil {
			o.fail("%v", err)
			return
		}
		if out, code := section(res.Output, "rollback"); code != 0 {
			o.fail("rollback %d: updatectl rollback --apply exited %d: %s", i+1, code, lastLines(out, 8))
			return
		}
		res, ok := r.bootTarget(ctx, o, statusScript)
		if !ok {
			return
		}
		h, err := status(res, "status")
		if err != nil {
			o.fail("%v", err)
			return
		}
		if v := h.Status.Booted.version(); v != want {
			o.fail("rollback %d: booted %q, want %s", i+1, v, want)
		} else {
			o.note("rollback %d: booted v%s", i+1, v)
		}
	}
}

func (r *run) printTable(w io.Writer) {
	fmt.Fprintf(w, "\n%-3s %-6s %9s  %s\n", "", "result", "time", "step")
	for _, o := range r.rows {
		fmt.Fprintf(w, "%-3s %-6s %9s  %s\n", o.id, o.status, secs(o.dur), o.title)
		for _, n := range o.notes {
			fmt.Fprintf(w, "%-3s %-6s %9s    %s\n", "", "", "", n)
		}
	}
	if len(r.metrics) > 0 {
		fmt.Fprintln(w, "\nmeasured:")
		for _, m := range r.metrics {
			fmt.Fprintln(w, "  "+m)
		}
	}
}

// newRand is the seeded source of the power-cut points.
func newRand(seed int64) *rand.Rand { return rand.New(rand.NewPCG(uint64(seed), 0x7477696e726f6f74)) }
