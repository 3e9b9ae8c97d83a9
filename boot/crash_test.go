package boot

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"
)

// The crash test's child is this test binary re-executed with
// BOOT_CRASH_CHILD=<partition dir>; it runs upgrade cycles until killed.
const (
	envCrashChild  = "BOOT_CRASH_CHILD"
	envCrashCycles = "BOOT_CRASH_CYCLES" // stop after this many cycles (0: run until killed)
	envCrashSeed   = "BOOT_CRASH_SEED"
	envCrashRename = "BOOT_CRASH_RENAMES" // "1": Options.NoExchange
	envCrashScale  = "BOOT_CRASH_SCALE"   // divide the images' sizes by this
)

func TestMain(m *testing.M) {
	if esp := os.Getenv(envBlessESP); esp != "" {
		os.Exit(blessMain(esp, os.Getenv(envBlessEFIVars)))
	}
	if dir := os.Getenv(envCrashChild); dir != "" {
		if err := crashChild(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashImages are four images with kernels and initramfs of different
// sizes (128 KiB to 3 MiB, divided by $BOOT_CRASH_SCALE), two of them
// sharing an initramfs.
func crashImages() []fstest.MapFS {
	r := rand.New(rand.NewPCG(1, 2))
	scale, _ := strconv.Atoi(os.Getenv(envCrashScale))
	blob := func(n int) string {
		b := make([]byte, n/max(scale, 1))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return string(b)
	}
	shared := blob(1 << 20)
	return []fstest.MapFS{
		testImage(blob(3<<20), blob(2<<20)),
		testImage(blob(128<<10), shared),
		testImage(blob(2<<20), shared),
		testImage(blob(512<<10), blob(3<<20)),
	}
}

// deploymentOf rebuilds the Deployment an installed entry was made from.
func deploymentOf(ie InstalledEntry) Deployment {
	linux, _ := ie.Entry.Get("linux")
	initrd, _ := ie.Entry.Get("initrd")
	return Deployment{ID: ie.ID, Image: ie.Image, Root: "UUID=0f3c",
		Kernel: Installed{Linux: linux, Initrd: initrd}, Kargs: []string{"quiet"}}
}

// crashChild runs upgrade cycles on the partition at dir: install the next
// image's kernel, stage it first with the current default as fallback,
// let "systemd-boot" try it and sometimes bless it, commit, gc. It prints
// the phase it enters on stdout, unbuffered, so the parent knows where the
// kill landed.
func crashChild(dir string) error {
	ctx := context.Background()
	efivars := filepath.Join(dir, "efivars")
	p, err := Open(filepath.Join(dir, "esp"), Options{AllowUnmounted: true, EFIVarsDir: efivars,
		NoExchange: os.Getenv(envCrashRename) == "1", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	seed, _ := strconv.ParseUint(os.Getenv(envCrashSeed), 10, 64)
	r := rand.New(rand.NewPCG(seed, 7))
	imgs := crashImages()
	cycles, _ := strconv.Atoi(os.Getenv(envCrashCycles))
	phase := func(s string) { os.Stdout.WriteString("phase " + s + "\n") }
	phase("ready")
	for n := 0; cycles == 0 || n < cycles; n++ {
		start := time.Now()
		es, err := p.Entries(ctx)
		if err != nil {
			return err
		}
		var fallback *Deployment
		if len(es) > 0 {
			d := deploymentOf(es[0])
			fallback = &d
		}
		i := r.IntN(len(imgs))
		k, err := FindKernel(imgs[i])
		if err != nil {
			return err
		}
		phase("install")
		inst, err := p.InstallKernel(ctx, imgs[i], k)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("%012x.%d", r.Uint64()&0xffffffffffff, r.IntN(10))
		first := Deployment{ID: id, Image: digestOf(nil, byte(r.IntN(256))), Root: "UUID=0f3c", Kernel: inst, Kargs: []string{"quiet"}}
		if fallback != nil && fallback.ID == first.ID {
			continue
		}
		phase("stage")
		if err := p.Stage(ctx, first, fallback); err != nil {
			return err
		}
		if len(es) > 0 && es[0].Name.Counted && r.IntN(2) == 0 {
			// The booted default is blessed after staging.
			setEFIVar(nil, efivars, `\loader\entries\`+es[0].File)
			phase("bless")
			if err := p.Bless(ctx); err != nil {
				return err
			}
		}
		phase("commit")
		if err := p.CommitStaged(ctx); err != nil {
			return err
		}
		phase("gc")
		if _, err := p.GC(ctx); err != nil {
			return err
		}
		phase("cycle " + strconv.FormatInt(int64(time.Since(start)), 10))
	}
	return nil
}

type child struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	last  string
	out   strings.Builder
}

func startCrashChild(t *testing.T, dir string, seed uint64, cycles int, renames bool) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+dir, envCrashSeed+"="+strconv.FormatUint(seed, 10), envCrashCycles+"="+strconv.Itoa(cycles))
	if renames {
		cmd.Env = append(cmd.Env, envCrashRename+"=1")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c
}

// waitLine waits for the next line (false at EOF).
func (c *child) waitLine() (string, bool) {
	l, ok := <-c.lines
	if ok {
		c.out.WriteString(l + "\n")
		if strings.HasPrefix(l, "phase ") {
			c.last = strings.TrimPrefix(l, "phase ")
		}
	}
	return l, ok
}

func (c *child) drain() {
	for {
		if _, ok := c.waitLine(); !ok {
			return
		}
	}
}

// checkBootable checks what systemd-boot would see: every *.conf file in
// loader/entries parses, names a kernel and an initramfs that exist with the
// content their name's digest says, and at least one entry sorts first.
func checkBootable(t *testing.T, esp string) {
	t.Helper()
	dir := filepath.Join(esp, "loader/entries")
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("loader/entries: %v", err)
	}
	var all []InstalledEntry
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".conf") {
			continue
		}
		n, err := ParseEntryName(de.Name())
		if err != nil {
			t.Fatalf("entry name %q: %v", de.Name(), err)
		}
		data, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseEntry(data)
		if err != nil {
			t.Fatalf("entry %s: %v", de.Name(), err)
		}
		for _, k := range []string{"linux", "initrd"} {
			v, ok := e.Get(k)
			if !ok {
				t.Fatalf("entry %s has no %s:\n%s", de.Name(), k, data)
			}
			content, err := os.ReadFile(filepath.Join(esp, v))
			if err != nil {
				t.Fatalf("entry %s: %v", de.Name(), err)
			}
			sum := sha256.Sum256(content)
			if !strings.Contains(v, hex.EncodeToString(sum[:])) {
				t.Fatalf("entry %s: %s is incomplete (%d bytes, sha256 %x)", de.Name(), v, len(content), sum)
			}
		}
		if !strings.Contains(e.Options(), "twinroot=") {
			t.Fatalf("entry %s has no twinroot=:\n%s", de.Name(), data)
		}
		all = append(all, InstalledEntry{File: de.Name(), Name: n, Entry: e})
	}
	if len(all) == 0 {
		t.Fatal("no entry in loader/entries")
	}
}

// TestCrashSafety kills a child running upgrade cycles (kernel copy, stage,
// bless, commit, gc) with SIGKILL at random moments, hundreds of times, and
// after each kill checks that every entry systemd-boot would read is
// complete and names complete files, then that the partition still works.
// It runs on the host's file system of t.TempDir() (ext4 here; the host
// has no vfat: the same code on vfat runs in TestVfatVM), once with
// RENAME_EXCHANGE and once with the ordered renames used where a file
// system cannot exchange.
func TestCrashSafety(t *testing.T) {
	kills := 200
	if testing.Short() {
		kills = 40
	}
	t.Run("exchange", func(t *testing.T) { crashSafety(t, t.TempDir(), kills, false) })
	t.Run("renames", func(t *testing.T) { crashSafety(t, t.TempDir(), kills/3, true) })
}

// crashSafety runs the crash test in dir.
func crashSafety(t *testing.T, dir string, kills int, renames bool) {
	ctx := context.Background()
	esp := filepath.Join(dir, "esp")
	for _, d := range []string{esp, filepath.Join(dir, "efivars")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// First install, then a clean run measures a cycle.
	p, err := Open(esp, Options{AllowUnmounted: true, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	img := crashImages()[1]
	k, _ := FindKernel(img)
	inst, err := p.InstallKernel(ctx, img, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, Deployment{ID: "000000000000.0", Image: digestOf(t, 1), Root: "UUID=0f3c", Kernel: inst}, nil); err != nil {
		t.Fatal(err)
	}
	c := startCrashChild(t, dir, 0, 5, renames)
	c.drain()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("clean child: %v\n%s", err, c.out.String())
	}
	var cycle time.Duration
	for _, l := range strings.Split(c.out.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "phase cycle "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			cycle = max(cycle, time.Duration(n))
		}
	}
	if cycle == 0 {
		t.Fatalf("no cycle measured:\n%s", c.out.String())
	}
	t.Logf("one upgrade cycle takes up to %v", cycle)

	phases := map[string]int{}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	for i := 0; i < kills; i++ {
		c := startCrashChild(t, dir, uint64(i+1), 0, renames)
		if l, ok := c.waitLine(); !ok || l != "phase ready" {
			c.drain()
			t.Fatalf("child %d did not start: %q\n%s", i, l, c.out.String())
		}
		deadline := time.After(time.Duration(r.Int64N(int64(2 * cycle))))
	wait:
		for {
			select {
			case l, ok := <-c.lines:
				if !ok {
					break wait
				}
				c.out.WriteString(l + "\n")
				if strings.HasPrefix(l, "phase ") {
					c.last = strings.TrimPrefix(l, "phase ")
				}
			case <-deadline:
				break wait
			}
		}
		c.cmd.Process.Signal(syscall.SIGKILL)
		c.drain()
		err := c.cmd.Wait()
		if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("child %d ended by itself (%v):\n%s", i, err, c.out.String())
		}
		ph := c.last
		if strings.HasPrefix(ph, "cycle ") {
			ph = "between cycles"
		}
		phases[ph]++
		checkBootable(t, esp)
	}
	t.Logf("%d kills, by phase: %v", kills, phases)
	// After all that, the partition still works and gc leaves only what
	// the entries name.
	c = startCrashChild(t, dir, 999, 2, renames)
	c.drain()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child after crashes: %v\n%s", err, c.out.String())
	}
	checkBootable(t, esp)
	es, err := p.Entries(ctx)
	if err != nil || len(es) != 2 {
		t.Fatalf("entries %v, %v", es, err)
	}
	used := map[string]bool{}
	for _, e := range es {
		for _, k := range []string{"linux", "initrd"} {
			v, _ := e.Entry.Get(k)
			used[strings.TrimPrefix(v, "/twinroot/")] = true
		}
	}
	files, _ := fs.Glob(os.DirFS(esp), "twinroot/*")
	if len(files) != len(used) {
		t.Fatalf("twinroot/ holds %q; entries name %v", files, used)
	}
	leftovers, _ := fs.Glob(os.DirFS(esp), "loader/.*")
	if len(leftovers) != 0 {
		t.Fatalf("leftovers in loader/: %q", leftovers)
	}
}
