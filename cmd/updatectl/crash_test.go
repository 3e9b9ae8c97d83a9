package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twinroot/twinroot/updater"
)

// TestCrashUpgradeFinalize SIGKILLs upgrade and finalize, run as their own
// processes, at random moments, and checks what a crash leaves: status
// still answers, the default entry is the old deployment (an interrupted
// upgrade) or the old or the new one (an interrupted finalize), every entry
// names kernel files that exist, the store passes fsck, and running the
// verb again completes. (A process kill, not a power cut: the page cache
// survives; the durability of each step is its package's.)
func TestCrashUpgradeFinalize(t *testing.T) {
	needRoot(t)
	reg := newTestRegistry(t)
	s := newScratch(t)
	ref := "docker://" + reg.host + "/os/sample:latest"
	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))
	reg.push(t, "os/sample:1", osImage(t, "1", "6.12.1"))
	v1 := lastResult(t, s.mustCLI(t, append([]string{"install", "--json", ref}, netFlags...)...)).Deployment
	reg.push(t, "os/sample:latest", withLayer(t, osImage(t, "2", "6.12.2"), "usr/big", randomBytes(4<<20)))
	bin := testBinary(t)
	child := func(sc *scratch, verb ...string) *exec.Cmd {
		cmd := exec.Command(bin, sc.args(verb...)...)
		cmd.Env = append(os.Environ(), execEnv+"=1")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd
	}
	// timed runs a verb to completion and returns how long it took.
	timed := func(sc *scratch, verb ...string) time.Duration {
		t.Helper()
		cmd := child(sc, verb...)
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %v: %s", verb, err, cmd.Stdout)
		}
		return time.Since(start)
	}
	// killed starts a verb and SIGKILLs it after a random part of *d,
	// counting the kills that hit a running process. A kill that came too
	// late halves *d: later runs are faster (layers already unpacked).
	hits := map[string]int{}
	killed := func(d *time.Duration, verb ...string) {
		t.Helper()
		cmd := child(s, verb...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(*d) + 1)))
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			hits[verb[0]]++
		} else {
			*d /= 2
		}
	}
	// consistent checks the state a crash left and returns the default.
	consistent := func(when string) updater.Host {
		t.Helper()
		h := s.status(t)
		for _, e := range []*updater.BootEntry{h.Status.Default, h.Status.Rollback, h.Status.Staged} {
			if e == nil || e.Boot == nil {
				continue
			}
			if _, err := os.Stat(filepath.Join(s.boot, e.Boot.Linux)); err != nil {
				t.Fatalf("%s: entry %s names a missing kernel: %v", when, e.Boot.Entry, err)
			}
		}
		if code, out, errOut := s.cli(t, "fsck"); code != 0 {
			t.Fatalf("%s: fsck: exit %d: %s%s", when, code, out, errOut)
		}
		return h
	}

	up := append([]string{"upgrade"}, netFlags...)
	// How long a whole upgrade takes, on a sysroot of its own.
	m := newScratch(t)
	m.mustCLI(t, append([]string{"install", "--json", "docker://" + reg.host + "/os/sample:1"}, netFlags...)...)
	d := timed(m, append([]string{"switch", ref}, netFlags...)...) * 6 / 5
	t.Setenv(cmdlineEnv, s.cmdline)
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	for i := range rounds {
		killed(&d, up...)
		h := consistent("upgrade killed")
		if id(h.Status.Default) != v1 {
			t.Fatalf("round %d: an interrupted upgrade changed the default to %s", i, id(h.Status.Default))
		}
	}
	fd := timed(m, "finalize") * 6 / 5
	for i := range rounds {
		timed(s, up...) // completes whatever the kills left
		h := consistent("upgrade after kills")
		staged := id(h.Status.Staged)
		if staged == "-" || id(h.Status.Default) != v1 {
			t.Fatalf("round %d: upgrade after kills: %s", i, roles(h))
		}
		killed(&fd, "finalize")
		h = consistent("finalize killed")
		if def := id(h.Status.Default); def != v1 && def != staged {
			t.Fatalf("round %d: after a killed finalize the default is %s, neither %s nor %s", i, def, v1, staged)
		}
		s.mustCLI(t, "finalize") // completes, or finds nothing staged
		if h = consistent("finalize again"); id(h.Status.Default) != staged || id(h.Status.Rollback) != v1 {
			t.Fatalf("round %d: finalize after a kill: %s", i, roles(h))
		}
		s.mustCLI(t, "rollback")
		if i%4 == 3 {
			s.mustCLI(t, "gc")
		}
	}
	t.Logf("kills that hit a running process: upgrade %d of %d, finalize %d of %d (kills within %v and %v)", hits["upgrade"], rounds, hits["finalize"], rounds, d, fd)
	if hits["upgrade"] < rounds/3 || hits["finalize"] < rounds/3 {
		t.Errorf("too few kills hit a running process (%v): the test did not test", hits)
	}
}
