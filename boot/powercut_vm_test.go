package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinroot/twinroot/internal/vmtest"
)

// envPowerCuts sets the number of power cuts of TestVfatPowerCutVM
// (defaultPowerCuts when unset, 0 skips it): each cut is a guest boot,
// 10-20 s here.
const envPowerCuts = "TWINROOT_BOOT_POWERCUTS"

// defaultPowerCuts is enough to catch the vfat rename problem (without the
// fsync after a rename the first cut found it, every time it was tried).
const defaultPowerCuts = 3

// readyWriter watches the guest console for the crash child's first line.
type readyWriter struct {
	once  sync.Once
	ready chan struct{}
	mu    sync.Mutex
	buf   []byte
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > 1<<16 {
		w.buf = w.buf[len(w.buf)-1<<15:]
	}
	found := strings.Contains(string(w.buf), "phase ready")
	w.mu.Unlock()
	if found {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

// TestVfatPowerCutVM cuts the power of a guest running upgrade cycles on a
// vfat ESP: QEMU is killed at a random moment (the guest's page cache is
// lost; writes the disk completed are kept, as on a device without a
// volatile cache). After each cut the image is checked from the host with
// fsck.vfat and mtools: every entry must be complete and name complete
// files. Then fsck.vfat repairs what FAT itself lost, as systemd-fsck does
// at boot, and the next boot continues from that state.
func TestVfatPowerCutVM(t *testing.T) {
	if vmtest.InGuest() {
		if err := crashChild(vmtest.DiskDir(0)); err != nil {
			t.Fatal(err)
		}
		return
	}
	n := defaultPowerCuts
	if v, ok := os.LookupEnv(envPowerCuts); ok {
		n, _ = strconv.Atoi(v)
	}
	if n <= 0 {
		t.Skipf("%s=%q: no power cuts", envPowerCuts, os.Getenv(envPowerCuts))
	}
	if _, err := vmtest.Prepare(t.Context()); err != nil {
		t.Skipf("no guest kernel: %v", err)
	}
	for _, tool := range []string{"fsck.vfat", "mcopy", "mmd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install dosfstools mtools)", tool)
		}
	}
	img := makeVfat(t, 64<<20)
	e := &esp{t: t, img: img}
	e.mtools("mmd", "-i", img, "::/esp", "::/efivars")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// One clean cycle first, as an installed machine has: a cut before the
	// very first entry set is committed leaves no entries, which is an
	// unfinished install, not a broken upgrade.
	if _, err := vmtest.RunContext(t.Context(), vmtest.Config{
		Command: []string{"/vmtest/test.bin", "-test.run", "^TestVfatPowerCutVM$", "-test.v"},
		Env:     []string{envCrashScale + "=8", envCrashSeed + "=0", envCrashCycles + "=1"},
		Files:   []vmtest.File{{Host: exe, Guest: "/vmtest/test.bin", Mode: 0o755}},
		Disks:   []vmtest.Disk{{Image: img, FSType: "vfat"}},
		Timeout: 150 * time.Second,
	}); err != nil {
		t.Fatalf("the install cycle: %v", err)
	}
	if err := imageBootable(e); err != nil {
		t.Fatalf("after the install cycle: %v", err)
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	clean, damagedReadable, unreadable, multiPass := 0, 0, 0, 0
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithCancel(t.Context())
		w := &readyWriter{ready: make(chan struct{})}
		cut := time.Duration(r.Int64N(int64(3 * time.Second)))
		go func() {
			select {
			case <-w.ready:
				time.Sleep(cut)
			case <-time.After(120 * time.Second):
			}
			cancel()
		}()
		_, err := vmtest.RunContext(ctx, vmtest.Config{
			Command: []string{"/vmtest/test.bin", "-test.run", "^TestVfatPowerCutVM$", "-test.v"},
			Env:     []string{envCrashScale + "=8", envCrashSeed + "=" + strconv.Itoa(i+1)},
			Files:   []vmtest.File{{Host: exe, Guest: "/vmtest/test.bin", Mode: 0o755}},
			Disks:   []vmtest.Disk{{Image: img, FSType: "vfat"}},
			Timeout: 150 * time.Second,
			Log:     w,
		})
		cancel()
		select {
		case <-w.ready:
		default:
			t.Fatalf("cut %d: the guest never started the cycles: %v\n%s", i, err, w.buf)
		}
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("cut %d: the guest ended by itself: %v\n%s", i, err, w.buf)
		}
		// What the firmware would see, before any repair: fsck.vfat's
		// verdict and whether every entry and the files it names read back
		// (mtools, one file at a time, so a damaged temporary file does not
		// hide them). Then the repair systemd-fsck would make at boot, after
		// which the entries must be complete.
		out, ferr := exec.Command("fsck.vfat", "-n", img).CombinedOutput()
		before := imageBootable(e)
		switch {
		case ferr == nil && before == nil:
			clean++
		case before == nil:
			damagedReadable++
		default:
			unreadable++
		}
		if ferr != nil || before != nil {
			t.Logf("cut %d, %v after the cycles started: entries before repair: %v; fsck.vfat -n:\n%s", i, cut.Round(time.Millisecond), before, out)
			// dosfstools 4.2 repairs two directory entries that share
			// clusters (a torn rename) by truncating the second to no
			// clusters; the kernel then refuses that directory at lookup
			// ("corrupted directory") and remounts the partition
			// read-only. Its next run deletes it. So repair as the boots
			// that follow would: until fsck.vfat finds nothing.
			// (What -a leaves as it is, it reports the same way every
			// pass: that ends the loop too.)
			var prev []byte
			for pass := 1; ; pass++ {
				out, err := exec.Command("fsck.vfat", "-a", "-w", img).CombinedOutput()
				if err == nil || bytes.Equal(out, prev) {
					break
				}
				prev = out
				if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("fsck.vfat -a: %v\n%s", err, out)
				}
				if pass == 3 {
					t.Fatalf("cut %d: fsck.vfat -a still repairs after %d passes:\n%s", i, pass, out)
				}
				if pass > 1 {
					multiPass++
					t.Logf("cut %d: fsck.vfat -a pass %d repaired what pass %d left:\n%s", i, pass, pass-1, out)
				}
			}
		}
		if err := imageBootable(e); err != nil {
			t.Fatalf("cut %d: after fsck.vfat -a: %v", i, err)
		}
	}
	t.Logf("%d power cuts: %d left a clean file system with complete entries; %d a damaged file system whose entries still read back complete; %d entries that did not read back until fsck.vfat repaired the file system; complete entries after the repair every time; %d repairs needed a second fsck.vfat pass",
		n, clean, damagedReadable, unreadable, multiPass)
}

// imageBootable is checkBootable for the ESP in a vfat image: it copies
// loader/entries/*.conf and each file they name out with mtools, one at a
// time, and checks them.
func imageBootable(e *esp) error {
	dir, err := os.MkdirTemp("", "esp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mt := func(args ...string) (string, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return string(out), nil
	}
	list, err := mt("mdir", "-b", "-i", e.img, "::/esp/loader/entries")
	if err != nil {
		return err
	}
	get := func(p string) error {
		dst := filepath.Join(dir, "esp", p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		_, err := mt("mcopy", "-n", "-i", e.img, "::/esp/"+p, dst)
		return err
	}
	n := 0
	for _, l := range strings.Split(list, "\n") {
		c, ok := strings.CutPrefix(strings.TrimSpace(l), "::/esp/loader/entries/")
		if !ok || !strings.HasSuffix(c, ".conf") {
			continue
		}
		n++
		if err := get("loader/entries/" + c); err != nil {
			return err
		}
		data, err := os.ReadFile(filepath.Join(dir, "esp/loader/entries", c))
		if err != nil {
			return err
		}
		ent, err := ParseEntry(data)
		if err != nil {
			return fmt.Errorf("entry %s: %w", c, err)
		}
		for _, k := range []string{"linux", "initrd"} {
			v, ok := ent.Get(k)
			if !ok {
				return fmt.Errorf("entry %s has no %s", c, k)
			}
			if _, err := os.Stat(filepath.Join(dir, "esp", v)); err == nil {
				continue
			}
			if err := get(strings.TrimPrefix(v, "/")); err != nil {
				return fmt.Errorf("entry %s: %w", c, err)
			}
			content, err := os.ReadFile(filepath.Join(dir, "esp", v))
			if err != nil {
				return err
			}
			sum := sha256.Sum256(content)
			if !strings.Contains(v, hex.EncodeToString(sum[:])) {
				return fmt.Errorf("entry %s: %s is incomplete (%d bytes)", c, v, len(content))
			}
		}
	}
	if n == 0 {
		return errors.New("no entry in loader/entries")
	}
	return nil
}
