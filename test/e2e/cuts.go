package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// rootPartOffset is where mkdisk.sh puts the root partition of a disk made
// with --esp-size 256: (2048 + 256·2048) sectors of 512 bytes.
const rootPartOffset = (2048 + 256*2048) * 512

const step6Script = `
check "reading the tampered file fails with EIO" sh -c 'out=$(cat /usr/bin/hello 2>&1 >/dev/null); test $? != 0 && echo "$out" | grep -q "Input/output error"'
capture fsck "$U" fsck
finish
`

// step6 flips one byte of the object behind /usr/bin/hello (v2's package) on
// the powered-off disk, boots, and expects EIO and an fsck that names the
// object. The byte is flipped back afterwards.
func (r *run) step6(ctx context.Context, o *outcome) {
	digest, err := r.objectDigest("/usr/bin/hello")
	if err != nil {
		o.fail("%v", err)
		return
	}
	obj := "/twinroot/objects/" + digest[:2] + "/" + digest[2:]
	off, err := physicalOffset(ctx, r.c.target, obj)
	if err != nil {
		o.fail("%v", err)
		return
	}
	if err := flipByte(r.c.target, off); err != nil {
		o.fail("%v", err)
		return
	}
	o.note("flipped the byte at disk offset %d (object %s, /usr/bin/hello)", off, digest[:16])
	defer func() {
		if err := flipByte(r.c.target, off); err != nil {
			o.fail("restoring the byte: %v", err)
		}
	}()
	res, ok := r.bootTarget(ctx, o, step6Script)
	if !ok {
		return
	}
	checks(o, res)
	out, code := section(res.Output, "fsck")
	if code == 0 {
		o.fail("fsck exited 0 on a tampered object")
	}
	if !strings.Contains(out, digest) && !strings.Contains(out, digest[:2]+"/"+digest[2:]) {
		o.fail("fsck does not name the object %s: %s", digest, lastLines(out, 6))
	} else {
		o.note("fsck (exit %d) names the object", code)
	}
}

// objectDigest is the fs-verity digest (hex) of path in v2's top layer, as
// the host's updatectl computes it.
func (r *run) objectDigest(path string) (string, error) {
	layers, err := os.ReadFile(filepath.Join(r.c.oci, "v2-upper"))
	if err != nil {
		return "", err
	}
	file := filepath.Join(strings.TrimSpace(string(layers)), path)
	out, err := exec.Command(r.c.updatectl, "verity", "digest", file).Output()
	if err != nil {
		return "", fmt.Errorf("updatectl verity digest %s: %w", file, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", fmt.Errorf("updatectl verity digest %s: no output", file)
	}
	_, hex, _ := strings.Cut(f[0], ":")
	if len(hex) < 3 {
		return "", fmt.Errorf("updatectl verity digest %s: %q", file, out)
	}
	return hex, nil
}

// physicalOffset is the disk offset of the first data block of path on the
// root partition (debugfs, read-only).
func physicalOffset(ctx context.Context, disk, path string) (int64, error) {
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "bmap "+path+" 0",
		fmt.Sprintf("%s?offset=%d", disk, rootPartOffset)).Output()
	if err != nil {
		return 0, fmt.Errorf("debugfs bmap %s: %w", path, err)
	}
	blk, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || blk == 0 {
		return 0, fmt.Errorf("debugfs bmap %s: %q", path, out)
	}
	return rootPartOffset + blk*4096 + 100, nil
}

func flipByte(disk string, off int64) error {
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}

const step7Script = `
capture before "$U" status --json
capture gc "$U" gc
capture after "$U" status --json
check "the running system keeps working after gc" sh -c 'hello >/dev/null && ls /usr/lib/systemd/systemd >/dev/null && systemctl is-system-running | grep -qv stopping'
capture fsck "$U" fsck
finish
`

func (r *run) step7(ctx context.Context, o *outcome) {
	res, ok := r.bootTarget(ctx, o, step7Script)
	if !ok {
		return
	}
	checks(o, res)
	before, err := status(res, "before")
	if err != nil {
		o.fail("%v", err)
		return
	}
	after, err := status(res, "after")
	if err != nil {
		o.fail("%v", err)
		return
	}
	if out, code := section(res.Output, "gc"); code != 0 {
		o.fail("gc exited %d: %s", code, lastLines(out, 6))
	}
	if _, code := section(res.Output, "fsck"); code != 0 {
		o.fail("fsck after gc exited %d", code)
	}
	keep := map[string]bool{}
	for _, e := range []*entry{before.Status.Booted, before.Status.Staged, before.Status.Rollback} {
		if e != nil {
			keep[e.ID] = true
		}
	}
	have := map[string]bool{}
	for _, e := range after.all() {
		have[e.ID] = true
	}
	for id := range keep {
		if !have[id] {
			o.fail("gc removed %s, which status called booted, staged or rollback", id)
		}
	}
	for id := range have {
		if !keep[id] {
			o.fail("gc kept %s, which no booted, staged or rollback deployment is", id)
		}
	}
	o.note("deployments %d → %d, images in the store %d → %d", len(before.all()), len(after.all()),
		before.Status.Store.Images, after.Status.Store.Images)
}

// The power-cut trials: each boot first checks what the previous cut left
// (a complete deployment booted, the old one or the new one, and a clean
// fsck), then starts the next upgrade and has its power cut at a seeded
// moment, either while `upgrade` runs or while the shutdown finalizes it.
const cutCheckScript = `
capture status "$U" status --json
capture fsck "$U" fsck
`

const cutUpgradeScript = `
e2e_mark cut-start
capture upgrade "$U" upgrade
e2e_mark cut-done
touch /run/twinroot-e2e-keep-running
sleep 600
`

const cutFinalizeScript = `
capture upgrade "$U" upgrade || exit 1
e2e_mark cut-start
touch /run/twinroot-e2e-keep-running
systemctl reboot
sleep 600
`

// step5 runs the power-cut trials. Trial i upgrades to image cut-i (v2 plus
// a one-file layer, version 2.i, pushed by run.sh), so every trial has
// something new to fetch whatever the previous one left.
func (r *run) step5(ctx context.Context, o *outcome) {
	rnd := newRand(r.c.seed)
	upWin, finWin := r.upgradeWall, r.finalize
	if upWin == 0 {
		upWin = 60 * time.Second
	}
	if finWin == 0 {
		finWin = 30 * time.Second
	}
	o.note("seed %d; windows: upgrade %s, finalize %s", r.c.seed, secs(upWin), secs(finWin))
	prev, pending := "", ""
	var outcomes []string
	// The outcomes so far go into the row however the loop ends.
	defer func() {
		for _, s := range outcomes {
			o.note("%s", s)
		}
		r.metrics = append(r.metrics, fmt.Sprintf("power cuts: %d of %d trials run (seed %d), outcomes in row 5",
			len(outcomes), r.c.cuts, r.c.seed))
	}()
	for i := 1; i <= r.c.cuts+1; i++ {
		if ctx.Err() != nil {
			o.fail("interrupted at trial %d", i)
			return
		}
		last := i == r.c.cuts+1
		script := cutCheckScript
		kind := "upgrade"
		var delay time.Duration
		if !last {
			tag := fmt.Sprintf("cut-%02d", i)
			if err := skopeoTag(ctx, r.c.port, tag, "stable"); err != nil {
				o.fail("%v", err)
				return
			}
			if i%2 == 0 {
				kind = "finalize"
				script += cutFinalizeScript
				delay = time.Duration(rnd.Float64() * 1.1 * float64(finWin))
			} else {
				script += cutUpgradeScript
				delay = time.Duration(rnd.Float64() * 1.1 * float64(upWin))
			}
		} else {
			script += "finish\n"
		}
		var t0 time.Duration
		kill := func(line string, since time.Duration) bool {
			if last {
				return false
			}
			if t0 == 0 && strings.TrimSpace(line) == "E2E-MARK cut-start" {
				t0 = since
			}
			return t0 != 0 && since >= t0+delay
		}
		// A boot that does not reach the driver (a failed boot) is followed
		// by the next one: systemd-boot must get to a complete deployment.
		var res bootResult
		var err error
		bootsTried := 0
		for bootsTried < 4 {
			bootsTried++
			res, err = r.target.boot(ctx, bootOptions{Script: script, KillAt: kill})
			if err != nil || res.Up != 0 {
				break
			}
		}
		if err != nil {
			o.fail("trial %d: %v", i, err)
			return
		}
		if res.Up == 0 {
			o.fail("trial %d: no boot reached the driver in %d boots", i, bootsTried)
			return
		}
		// What the previous cut left.
		h, err := status(res, "status")
		if err != nil {
			o.fail("after cut %d: %v", i-1, err)
		} else {
			v := h.Status.Booted.version()
			if i > 1 && v != prev && v != pending {
				o.fail("after cut %d: booted version %q, neither %q (before) nor %q (the upgrade)", i-1, v, prev, pending)
			}
			if i > 1 {
				outcomes[len(outcomes)-1] += fmt.Sprintf(" → booted %s", v)
			}
			prev = v
		}
		if _, code := section(res.Output, "fsck"); code != 0 {
			o.fail("after cut %d: fsck exited %d", i-1, code)
		}
		if bootsTried > 1 {
			o.note("after cut %d: %d boots failed before one completed", i-1, bootsTried-1)
		}
		if last {
			break
		}
		pending = fmt.Sprintf("2.%02d", i)
		what := fmt.Sprintf("cut %d (%s, +%s)", i, kind, secs(delay))
		if out, code := section(res.Output, "upgrade"); code > 0 {
			what := fmt.Sprintf("cut %d: upgrade exited %d before the cut: %s", i, code, lastLines(out, 3))
			o.fail("%s", what)
		}
		switch {
		case res.Killed && t0 != 0:
			what += fmt.Sprintf(": power cut %s after the mark", secs(res.KilledAt-t0))
			if _, done := res.Marks["cut-done"]; done {
				what += " (upgrade had finished)"
			}
		case t0 == 0:
			what += ": the step never reached its mark"
		default:
			what += ": finished before the cut point"
		}
		outcomes = append(outcomes, what)
	}
}
