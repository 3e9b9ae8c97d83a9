package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: deployments keep /etc ownership, the tests mount tmpfs")
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir for the test.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// withLayer adds a layer of one file to img.
func withLayer(t *testing.T, img v1.Image, name string, content []byte) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(content))})
	tw.Write(content)
	tw.Close()
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, l); err != nil {
		t.Fatal(err)
	}
	return img
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// wantError checks a failing run: exit code and the words that explain
// the cause and name the fix.
func wantError(t *testing.T, what string, code int, stderr string, wantCode int, words ...string) {
	t.Helper()
	t.Logf("%s: exit %d:\n%s", what, code, strings.TrimSpace(stderr))
	if code != wantCode {
		t.Errorf("%s: exit %d, want %d; stderr: %s", what, code, wantCode, stderr)
	}
	for _, w := range words {
		if !strings.Contains(stderr, w) {
			t.Errorf("%s: stderr lacks %q:\n%s", what, w, stderr)
		}
	}
}

// TestErrorsNameTheFix: the errors a user meets say what is wrong and what
// to do.
func TestErrorsNameTheFix(t *testing.T) {
	needRoot(t)
	reg := newTestRegistry(t)
	reg.push(t, "os/sample:1", osImage(t, "1", "6.12.1"))

	t.Run("sysroot not initialised", func(t *testing.T) {
		s := newScratch(t)
		code, _, errOut := s.cli(t, "status")
		wantError(t, "status", code, errOut, exitNoInit, "sysroot not initialised", "updatectl --sysroot "+s.sysroot+" install REF")
		code, _, errOut = s.cli(t, append([]string{"upgrade"}, netFlags...)...)
		wantError(t, "upgrade", code, errOut, exitNoInit, "sysroot not initialised")
	})

	t.Run("scratch sysroot without --boot", func(t *testing.T) {
		s := newScratch(t)
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"--sysroot", s.sysroot, "install", "docker://" + reg.host + "/os/sample:1"}, netFlags...), &stdout, &stderr)
		wantError(t, "install", code, stderr.String(), exitFailure, "pass --boot DIR")
		if ents, _ := os.ReadDir(s.sysroot); len(ents) != 0 {
			t.Errorf("the refused install wrote into the sysroot: %v", ents)
		}
	})

	t.Run("registry unreachable", func(t *testing.T) {
		s := newScratch(t)
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := l.Addr().String()
		l.Close()
		code, _, errOut := s.cli(t, append([]string{"install", "--retry-times", "0", "docker://" + dead + "/os/sample:1"}, netFlags...)...)
		wantError(t, "install", code, errOut, exitFailure, "registry unreachable", "check the network")
	})

	t.Run("credentials missing or wrong", func(t *testing.T) {
		s := newScratch(t)
		h := registry.New()
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		}))
		defer srv.Close()
		host := strings.TrimPrefix(srv.URL, "http://")
		ref := "docker://" + host + "/os/sample:1"
		code, _, errOut := s.cli(t, append([]string{"install", ref}, netFlags...)...)
		wantError(t, "no credentials", code, errOut, exitFailure, "refused the credentials", "login", "--authfile")
		auth := filepath.Join(t.TempDir(), "auth.json")
		os.WriteFile(auth, []byte(`{"auths":{"`+host+`":{"auth":"YWxpY2U6d3Jvbmc="}}}`), 0o600) // alice:wrong
		code, _, errOut = s.cli(t, append([]string{"install", "--authfile", auth, ref}, netFlags...)...)
		wantError(t, "wrong password", code, errOut, exitFailure, "refused the credentials", "check the user name and password")
	})

	t.Run("image not bootable", func(t *testing.T) {
		s := newScratch(t)
		reg.push(t, "os/nokernel:1", osImage(t, "1", ""))
		code, _, errOut := s.cli(t, append([]string{"install", "docker://" + reg.host + "/os/nokernel:1"}, netFlags...)...)
		wantError(t, "install", code, errOut, exitFailure, "image not bootable", "/usr/lib/modules/<kver>/vmlinuz")
		// Nothing was deployed.
		if h := s.status(t); h.Status.Default != nil || len(h.Status.Other) != 0 {
			t.Errorf("a deployment of an unbootable image exists: %+v", h.Status)
		}
	})

	t.Run("disk full", func(t *testing.T) {
		s := newScratch(t)
		mountTmpfs(t, s.sysroot, 512<<10)
		reg.push(t, "os/big:1", withLayer(t, osImage(t, "1", "6.12.1"), "usr/big", randomBytes(1<<20)))
		code, _, errOut := s.cli(t, append([]string{"install", "docker://" + reg.host + "/os/big:1"}, netFlags...)...)
		wantError(t, "install", code, errOut, exitFailure, "not enough space", "updatectl gc")
	})

	t.Run("boot partition full", func(t *testing.T) {
		s := newScratch(t)
		mountTmpfs(t, s.boot, 64<<10)
		img := withLayer(t, osImage(t, "1", "6.12.1"), "usr/lib/modules/6.12.1/vmlinuz", randomBytes(256<<10))
		reg.push(t, "os/bigkernel:1", img)
		code, _, errOut := s.cli(t, append([]string{"install", "docker://" + reg.host + "/os/bigkernel:1"}, netFlags...)...)
		wantError(t, "install", code, errOut, exitFailure, "not enough space", s.boot)
		if h := s.status(t); h.Status.Default != nil || len(h.Status.Other) != 0 {
			t.Errorf("a deployment whose kernel did not fit exists: %+v", h.Status)
		}
	})

	t.Run("not root", func(t *testing.T) {
		s := newScratch(t)
		s.mustCLI(t, append([]string{"install", "docker://" + reg.host + "/os/sample:1"}, netFlags...)...)
		bin := testBinary(t)
		for _, d := range []string{filepath.Dir(filepath.Dir(s.sysroot)), filepath.Dir(s.sysroot), s.sysroot, s.boot, filepath.Dir(s.cmdline)} {
			os.Chmod(d, 0o755)
		}
		os.Chmod(s.cmdline, 0o644)
		cmd := exec.Command(bin, s.args("status")...)
		cmd.Env = append(os.Environ(), execEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		wantError(t, "status as nobody", code, stderr.String(), exitNotRoot, "permission denied", "run as root")
	})
}

// testBinary copies the test binary where an unprivileged user can run it.
func testBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "updatectl-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "updatectl")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLockTwoProcesses: an upgrade and a gc started at once, as two
// processes, are serialised by the sysroot lock: gc waits, saying who
// holds the lock, and runs after the upgrade; with --no-wait it fails at
// once with exit 4.
func TestLockTwoProcesses(t *testing.T) {
	needRoot(t)
	reg := newTestRegistry(t)
	s := newScratch(t)
	ref := "docker://" + reg.host + "/os/sample:latest"
	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))
	s.mustCLI(t, append([]string{"install", ref}, netFlags...)...)
	reg.push(t, "os/sample:latest", osImage(t, "2", "6.12.2"))

	// The registry holds the upgrade's manifest request: the upgrade then
	// holds the lock for as long as the test wants.
	gate := make(chan struct{})
	reg.gate.Store(&gate)
	bin := testBinary(t)
	start := func(verb ...string) (*exec.Cmd, *bytes.Buffer, *os.File) {
		cmd := exec.Command(bin, s.args(verb...)...)
		cmd.Env = append(os.Environ(), execEnv+"=1")
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		pr, pw, _ := os.Pipe()
		cmd.Stderr = pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		return cmd, &stdout, pr
	}
	up, upOut, upErr := start(append([]string{"upgrade", "--json"}, netFlags...)...)
	select {
	case <-reg.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the upgrade never asked the registry")
	}

	// status reads without the lock: it answers while the upgrade holds it.
	if code, out, errOut := s.cli(t, "status"); code != 0 || !strings.Contains(out, "Default image") {
		t.Errorf("status during the upgrade: exit %d: %s%s", code, out, errOut)
	}
	// --no-wait: fails at once, naming the holder.
	code, _, errOut := s.cli(t, "--no-wait", "gc")
	wantError(t, "gc --no-wait", code, errOut, exitLocked, "locked", "pid "+strconv.Itoa(up.Process.Pid), "upgrade")

	gc, gcOut, gcErr := start("gc", "--json")
	lines := bufio.NewScanner(gcErr)
	waiting := ""
	for lines.Scan() {
		if strings.Contains(lines.Text(), "waiting for the sysroot lock") {
			waiting = lines.Text()
			break
		}
	}
	if !strings.Contains(waiting, "pid "+strconv.Itoa(up.Process.Pid)) || !strings.Contains(waiting, "upgrade") {
		t.Errorf("gc's waiting message %q does not name the upgrade's pid %d", waiting, up.Process.Pid)
	}
	// gc is blocked on the lock: it has printed no result.
	if gcOut.Len() != 0 {
		t.Errorf("gc ran while the upgrade held the lock: %s", gcOut)
	}
	reg.gate.Store(nil)
	close(gate)
	go func() {
		for lines.Scan() {
		}
	}()
	rest, _ := readAll(upErr)
	if err := up.Wait(); err != nil {
		t.Fatalf("upgrade: %v: %s", err, rest)
	}
	if err := gc.Wait(); err != nil {
		t.Fatalf("gc: %v", err)
	}
	res := lastResult(t, upOut.String())
	if !res.Changed {
		t.Errorf("upgrade: %+v", res)
	}
	lastResult(t, gcOut.String())
	// gc ran after the upgrade: it kept the staged deployment the upgrade made.
	if h := s.status(t); id(h.Status.Staged) != res.Deployment {
		t.Errorf("after upgrade and gc: staged %s, want %s", id(h.Status.Staged), res.Deployment)
	}
}

func readAll(f *os.File) (string, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(f)
	return b.String(), err
}
