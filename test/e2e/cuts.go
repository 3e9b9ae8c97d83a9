package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// step7Script first makes garbage the way an operator does: it stages v3
// with switch, changes its mind (rollback discards the staged update, and
// swaps the entries) and rolls back again, so the boot order is as before
// and v3's deployment and image are needed by nothing. gc must remove
// exactly those (and, after step 3, the failed v3 deployment too).
const step7Script = `
capture switch "$U" switch ` + refV3 + `
capture rollback1 "$U" rollback
capture rollback2 "$U" rollback
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
	for _, n := range []string{"switch", "rollback1", "rollback2"} {
		if out, code := section(res.Output, n); code != 0 {
			o.fail("%s exited %d: %s", n, code, lastLines(out, 6))
			return
		}
	}
	if out, code := section(res.Output, "gc"); code != 0 {
		o.fail("gc exited %d: %s", code, lastLines(out, 6))
	}
	if _, code := section(res.Output, "fsck"); code != 0 {
		o.fail("fsck after gc exited %d", code)
	}
	if b := before.Status.Booted; b.version() != "2" {
		o.fail("booted %q before gc, want 2", b.version())
	}
	if s := before.Status.Staged; s != nil {
		o.fail("the rollback left %s staged", s.ID)
	}
	keep := map[string]bool{}
	for _, e := range []*entry{before.Status.Booted, before.Status.Staged, before.Status.Rollback, before.Status.Default} {
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
	var v3 []string
	for _, e := range before.all() {
		if e.version() == "3" {
			v3 = append(v3, e.ID)
		}
	}
	if len(v3) == 0 {
		o.fail("status before gc lists no v3 deployment: the switch made none")
	}
	if len(after.all()) >= len(before.all()) {
		o.fail("gc removed no deployment (%d before, %d after)", len(before.all()), len(after.all()))
	}
	if after.Status.Store.Images >= before.Status.Store.Images {
		o.fail("gc removed no image (%d before, %d after), though v3's image is needed by nothing", before.Status.Store.Images, after.Status.Store.Images)
	}
	gcOut, _ := section(res.Output, "gc")
	o.note("v3 deployments %s made garbage; deployments %d → %d, images in the store %d → %d; gc: %s",
		strings.Join(v3, ", "), len(before.all()), len(after.all()),
		before.Status.Store.Images, after.Status.Store.Images, lastLines(gcOut, 1))
}
