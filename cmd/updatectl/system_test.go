package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/twinroot/twinroot/updater"
)

// execEnv makes the test binary act as updatectl (the lock test runs two
// processes).
const execEnv = "UPDATECTL_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// osImage is a bootc-style image: a kernel and initramfs (small fake
// files) under /usr/lib/modules/<kver>, /usr/lib/os-release, /etc, a
// kargs.d file and the version label. kernel "" leaves the kernel out.
func osImage(t testing.TB, version, kernel string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	add := func(name string, mode int64, body string) {
		h := &tar.Header{Name: name, Mode: mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(body))}
		if strings.HasSuffix(name, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	for _, d := range []string{"etc/", "usr/", "usr/lib/", "usr/lib/bootc/", "usr/lib/bootc/kargs.d/", "usr/lib/modules/", "var/", "var/lib/"} {
		add(d, 0o755, "")
	}
	add("usr/lib/os-release", 0o644, fmt.Sprintf("NAME=\"Twinroot Sample\"\nID=twinroot-sample\nVERSION_ID=%s\nPRETTY_NAME=\"Twinroot Sample %s\"\n", version, version))
	add("etc/hostname", 0o644, "sample\n")
	add("etc/motd", 0o644, "sample image version "+version+"\n")
	add("usr/bin-version", 0o644, strings.Repeat("v"+version+" ", 40))
	add("usr/lib/bootc/kargs.d/10-sample.toml", 0o644, "kargs = [\"console=ttyS0\"]\n")
	if kernel != "" {
		add("usr/lib/modules/"+kernel+"/", 0o755, "")
		add("usr/lib/modules/"+kernel+"/vmlinuz", 0o644, "fake kernel "+kernel+" "+strings.Repeat("k", 200))
		add("usr/lib/modules/"+kernel+"/initramfs.img", 0o644, "fake initramfs "+kernel+" "+strings.Repeat("i", 200))
	}
	tw.Close()
	raw := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.version": version, "containers.bootc": "1"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// testRegistry is go-containerregistry's registry on 127.0.0.1, counting
// manifest requests, with an optional gate that holds manifest requests.
type testRegistry struct {
	host      string
	manifests atomic.Int64
	blobs     atomic.Int64
	gate      atomic.Pointer[chan struct{}]
	arrived   chan struct{}
}

func newTestRegistry(t testing.TB) *testRegistry {
	r := &testRegistry{arrived: make(chan struct{}, 16)}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/manifests/") {
			r.manifests.Add(1)
			if g := r.gate.Load(); g != nil {
				r.arrived <- struct{}{}
				<-*g
			}
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobs.Add(1)
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *testRegistry) push(t testing.TB, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(r.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
}

// scratch is a scratch sysroot and boot directory, and the file the
// TWINROOT_CMDLINE test hook reads.
type scratch struct {
	sysroot, boot, cmdline string
}

func newScratch(t *testing.T) *scratch {
	d := t.TempDir()
	s := &scratch{sysroot: filepath.Join(d, "sysroot"), boot: filepath.Join(d, "boot"), cmdline: filepath.Join(d, "cmdline")}
	os.MkdirAll(s.sysroot, 0o755)
	os.MkdirAll(s.boot, 0o755)
	s.setBooted(t, "")
	t.Setenv(cmdlineEnv, s.cmdline)
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(d, "no-auth.json"))
	return s
}

// setBooted writes the simulated kernel command line: twinroot=id:hex,
// or a system not booted from twinroot when arg is "".
func (s *scratch) setBooted(t *testing.T, arg string) {
	if err := os.WriteFile(s.cmdline, []byte("BOOT_IMAGE=/vmlinuz quiet "+arg+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (s *scratch) args(verb ...string) []string {
	return append([]string{"--sysroot", s.sysroot, "--boot", s.boot}, verb...)
}

var netFlags = []string{"--tls-verify=false", "--registries-conf", "-"}

func (s *scratch) cli(t *testing.T, verb ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), s.args(verb...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func (s *scratch) mustCLI(t *testing.T, verb ...string) string {
	t.Helper()
	code, out, errOut := s.cli(t, verb...)
	if code != 0 {
		t.Fatalf("updatectl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(verb, " "), code, out, errOut)
	}
	return out
}

// status runs status --json, validates it against the schema and decodes it.
func (s *scratch) status(t *testing.T) updater.Host {
	t.Helper()
	out := s.mustCLI(t, "status", "--json")
	if err := updater.ValidateDocument([]byte(out)); err != nil {
		t.Fatalf("status --json does not match the schema: %v\n%s", err, out)
	}
	var h updater.Host
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// lastResult validates every JSON line of a verb's --json output and
// returns the final Result.
func lastResult(t *testing.T, out string) updater.Result {
	t.Helper()
	var res updater.Result
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i, l := range lines {
		if err := updater.ValidateDocument([]byte(l)); err != nil {
			t.Fatalf("line %d does not match the schema: %v\n%s", i+1, err, l)
		}
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || res.Kind != "Result" {
		t.Fatalf("last line is not a Result: %q (%v)", lines[len(lines)-1], err)
	}
	return res
}

// writeEFIString writes an efivarfs file: 4 attribute bytes, then UTF-16LE.
func writeEFIString(t *testing.T, path, s string) {
	t.Helper()
	b := []byte{7, 0, 0, 0}
	for _, c := range s {
		b = append(b, byte(c), byte(c>>8))
	}
	if err := os.WriteFile(path, append(b, 0, 0), 0o644); err != nil {
		t.Fatal(err)
	}
}

func id(e *updater.BootEntry) string {
	if e == nil {
		return "-"
	}
	return e.ID
}

func ver(e *updater.BootEntry) string {
	if e == nil {
		return "-"
	}
	return e.Image.Version
}

func roles(h updater.Host) string {
	s := h.Status
	return fmt.Sprintf("booted=%s staged=%s default=%s rollback=%s", ver(s.Booted), ver(s.Staged), ver(s.Default), ver(s.Rollback))
}

// TestLifecycle is the walk-through of the issue on a scratch sysroot and
// boot directory against a registry on 127.0.0.1: install v1, upgrade to
// v2 (staged), finalize, boot v2 (simulated), rollback, gc.
func TestLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (deployments keep /etc ownership)")
	}
	reg := newTestRegistry(t)
	s := newScratch(t)
	ref := "docker://" + reg.host + "/os/sample:latest"
	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))

	out := s.mustCLI(t, append([]string{"install", "--json", ref}, netFlags...)...)
	res := lastResult(t, out)
	if !res.Changed || res.Deployment == "" {
		t.Fatalf("install: %+v", res)
	}
	v1ID := res.Deployment
	h := s.status(t)
	if h.Status.Default == nil || h.Status.Default.ID != v1ID || h.Status.Booted != nil || h.Status.Staged != nil || h.Status.Rollback != nil {
		t.Fatalf("after install: %s", roles(h))
	}
	if h.Spec.Image == nil || h.Spec.Image.Image != ref || h.Status.Default.Image.Version != "1" || h.Status.Default.Image.OS != "Twinroot Sample 1" {
		t.Errorf("after install: spec %+v, default %+v", h.Spec.Image, h.Status.Default.Image)
	}
	if b := h.Status.Default.Boot; b == nil || !strings.HasPrefix(b.Entry, "twinroot") || !strings.HasSuffix(b.Entry, ".conf") {
		t.Errorf("default has no boot entry: %+v", b)
	}
	human := s.mustCLI(t, "status")
	if !strings.Contains(human, "Default image: "+ref) || !strings.Contains(human, "Version: 1 (2026-11-01T00:00:00Z)") {
		t.Errorf("human status:\n%s", human)
	}

	// Nothing new: upgrade --check exits 77, upgrade is a no-op.
	if code, out, _ := s.cli(t, append([]string{"upgrade", "--check"}, netFlags...)...); code != exitNoUpd || !strings.Contains(out, "no update") {
		t.Errorf("upgrade --check with nothing new: exit %d: %s", code, out)
	}
	if res := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...)); res.Changed {
		t.Errorf("upgrade with nothing new changed something: %+v", res)
	}

	reg.push(t, "os/sample:latest", osImage(t, "2", "6.12.2"))
	code, out, _ := s.cli(t, append([]string{"upgrade", "--check", "--json"}, netFlags...)...)
	if code != 0 || !strings.Contains(out, `"available":true`) {
		t.Errorf("upgrade --check with v2 pushed: exit %d: %s", code, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := updater.ValidateDocument([]byte(l)); err != nil {
			t.Errorf("upgrade --check --json: %v: %s", err, l)
		}
	}
	res = lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...))
	v2ID := res.Deployment
	if !res.Changed || !res.RebootNeeded || v2ID == "" || v2ID == v1ID {
		t.Fatalf("upgrade to v2: %+v", res)
	}
	h = s.status(t)
	if id(h.Status.Staged) != v2ID || id(h.Status.Default) != v1ID {
		t.Fatalf("after upgrade: %s", roles(h))
	}
	// Upgrading again finds v2 staged: nothing to do.
	if res := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...)); res.Changed {
		t.Errorf("second upgrade: %+v", res)
	}

	// A crash after staging (the next boot has another boot id): finalize
	// drops the update and keeps the system; upgrading again stages it anew.
	t.Setenv(bootIDEnv, "after-a-crash")
	if h = s.status(t); h.Status.Staged != nil {
		t.Errorf("a set staged before the crash shows as staged: %s", roles(h))
	}
	res = lastResult(t, s.mustCLI(t, "finalize", "--json"))
	if h = s.status(t); !res.Changed || h.Status.Staged != nil || id(h.Status.Default) != v1ID || !strings.Contains(res.Message, "earlier boot") {
		t.Fatalf("finalize after a crash: %+v, %s", res, roles(h))
	}
	res = lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...))
	dropped := v2ID // in no role now: the upgrade prunes it
	if v2ID = res.Deployment; !res.Changed || v2ID == dropped {
		t.Fatalf("upgrade after the dropped update: %+v", res)
	}
	if !slices.Contains(res.Removed, "deployment "+dropped) {
		t.Errorf("the upgrade did not prune %s, dropped after the crash: %v", dropped, res.Removed)
	}
	// Another crash, and this time upgrade runs before any finalize: the
	// stale staged set does not count as staged, so it stages again.
	t.Setenv(bootIDEnv, "after-a-second-crash")
	res = lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...))
	dropped2 := v2ID
	if v2ID = res.Deployment; !res.Changed || v2ID == dropped2 {
		t.Fatalf("upgrade over a set staged before a crash: %+v", res)
	}
	if !slices.Contains(res.Removed, "deployment "+dropped2) || slices.Contains(res.Removed, "deployment "+v1ID) {
		t.Errorf("the upgrade over a stale staged set pruned %v; want %s and not %s", res.Removed, dropped2, v1ID)
	}

	// Finalize (at shutdown): v2 first, v1 its fallback.
	res = lastResult(t, s.mustCLI(t, "finalize", "--json"))
	if !res.Changed || res.Deployment != v2ID {
		t.Fatalf("finalize: %+v", res)
	}
	h = s.status(t)
	if id(h.Status.Default) != v2ID || id(h.Status.Rollback) != v1ID || h.Status.Staged != nil {
		t.Fatalf("after finalize: %s", roles(h))
	}
	if b := h.Status.Default.Boot; b == nil || b.TriesLeft == nil || *b.TriesLeft != 3 || b.Blessed {
		t.Errorf("new default entry should count 3 tries: %+v", b)
	}
	if res := lastResult(t, s.mustCLI(t, "finalize", "--json")); res.Changed {
		t.Errorf("finalize with nothing staged: %+v", res)
	}

	// Booting v2, simulated through the command line; the boot loader
	// counted the try (its LoaderBootCountPath names the entry), and the
	// boot was good: bless removes the counter.
	s.setBooted(t, "twinroot="+v2ID+":"+h.Status.Default.Image.ComposefsDigest)
	efivars := t.TempDir()
	t.Setenv(efivarsEnv, efivars)
	writeEFIString(t, filepath.Join(efivars, "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"), `\loader\entries\`+h.Status.Default.Boot.Entry)
	s.mustCLI(t, "bless")
	h = s.status(t)
	if b := h.Status.Booted.Boot; b == nil || !b.Blessed || b.TriesLeft != nil {
		t.Errorf("after bless: %+v", b)
	}
	if id(h.Status.Booted) != v2ID || id(h.Status.Rollback) != v1ID || id(h.Status.Default) != v2ID {
		t.Fatalf("booted v2: %s", roles(h))
	}
	human = s.mustCLI(t, "status")
	if !strings.Contains(human, "● Booted image: "+ref) || !strings.Contains(human, "Rollback image: "+ref) {
		t.Errorf("human status after booting v2:\n%s", human)
	}

	// Rollback: v1 next; twice toggles back; thrice v1 again.
	res = lastResult(t, s.mustCLI(t, "rollback", "--json"))
	if res.Deployment != v1ID {
		t.Fatalf("rollback: %+v", res)
	}
	if h = s.status(t); id(h.Status.Default) != v1ID || id(h.Status.Rollback) != v2ID || id(h.Status.Booted) != v2ID {
		t.Fatalf("after rollback: %s", roles(h))
	}
	s.mustCLI(t, "rollback")
	if h = s.status(t); id(h.Status.Default) != v2ID || id(h.Status.Rollback) != v1ID {
		t.Fatalf("after the second rollback: %s", roles(h))
	}

	// A staged update is discarded by rollback.
	reg.push(t, "os/sample:latest", osImage(t, "3", "6.12.3"))
	v3ID := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...)).Deployment
	if h = s.status(t); id(h.Status.Staged) != v3ID {
		t.Fatalf("upgrade to v3: %s", roles(h))
	}
	s.mustCLI(t, "rollback")
	if h = s.status(t); h.Status.Staged != nil || id(h.Status.Default) != v1ID || id(h.Status.Rollback) != v2ID {
		t.Fatalf("rollback with v3 staged: %s", roles(h))
	}
	s.mustCLI(t, "rollback") // v2 default again, v1 rollback; v3 is in no role now
	// Pinned, v3 survives the prunes below and gc; unpinned, gc removes it.
	if res := lastResult(t, s.mustCLI(t, "pin", "--json", v3ID)); !res.Changed {
		t.Errorf("pin: %+v", res)
	}
	if code, _, errOut := s.cli(t, "pin", "nosuch.0"); code != exitFailure || !strings.Contains(errOut, "no such deployment") {
		t.Errorf("pin of a missing deployment: exit %d: %s", code, errOut)
	}

	// A switch stages another image, and upgrade follows it from then on;
	// a second switch replaces it and prunes it (v5), keeping booted (v2),
	// staged (v4), default (v2), rollback (v1) and the pinned v3.
	reg.push(t, "os/sample:v5", osImage(t, "5", "6.12.5"))
	v5ref := "docker://" + reg.host + "/os/sample:v5"
	v5ID := lastResult(t, s.mustCLI(t, append([]string{"switch", v5ref, "--json"}, netFlags...)...)).Deployment
	if h = s.status(t); id(h.Status.Staged) != v5ID || h.Spec.Image.Image != v5ref {
		t.Fatalf("switch to v5: %s, spec %+v", roles(h), h.Spec.Image)
	}
	if res := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, netFlags...)...)); res.Changed {
		t.Errorf("upgrade after the switch should follow v5, already staged: %+v", res)
	}
	reg.push(t, "os/sample:latest", osImage(t, "4", "6.12.4"))
	res = lastResult(t, s.mustCLI(t, append([]string{"switch", "--json", ref}, netFlags...)...))
	v4ID := res.Deployment
	pruned := strings.Join(res.Removed, "\n")
	for _, want := range []string{"deployment " + v5ID, "image ", "boot /twinroot/vmlinuz-"} {
		if !strings.Contains(pruned, want) {
			t.Errorf("the switch to v4 did not prune %q: %v", want, res.Removed)
		}
	}
	for _, keep := range []string{v1ID, v2ID, v3ID, v4ID} {
		if strings.Contains(pruned, "deployment "+keep) {
			t.Errorf("the switch to v4 pruned %s: %v", keep, res.Removed)
		}
	}
	if res.FreedBytes == 0 {
		t.Errorf("pruning v5 freed nothing in the store: %+v", res)
	}
	h = s.status(t)
	if id(h.Status.Booted) != v2ID || id(h.Status.Staged) != v4ID || id(h.Status.Rollback) != v1ID || len(h.Status.Other) != 1 || h.Status.Other[0].ID != v3ID {
		t.Fatalf("before gc: %s, other %v", roles(h), h.Status.Other)
	}
	t.Logf("before gc:\n%s", s.mustCLI(t, "status"))
	imagesBefore := h.Status.Store.Images
	res = lastResult(t, s.mustCLI(t, "gc", "--json"))
	if first := strings.Join(res.Removed, "\n"); strings.Contains(first, "deployment ") {
		t.Errorf("gc removed a deployment though only the pinned %s is in no role: %v", v3ID, res.Removed)
	}
	s.mustCLI(t, "unpin", v3ID)
	res = lastResult(t, s.mustCLI(t, "gc", "--json"))
	removed := strings.Join(res.Removed, "\n")
	for _, want := range []string{"deployment " + v3ID} {
		if !strings.Contains(removed, want) {
			t.Errorf("gc did not remove %q: %v", want, res.Removed)
		}
	}
	for _, keep := range []string{v1ID, v2ID, v4ID} {
		if strings.Contains(removed, "deployment "+keep) {
			t.Errorf("gc removed %s: %v", keep, res.Removed)
		}
	}
	t.Logf("after gc:\n%s", s.mustCLI(t, "status"))
	h = s.status(t)
	if id(h.Status.Booted) != v2ID || id(h.Status.Staged) != v4ID || id(h.Status.Rollback) != v1ID || len(h.Status.Other) != 0 {
		t.Fatalf("after gc: %s, other %v", roles(h), h.Status.Other)
	}
	// v1, v2 and v4 are left; v3's image went (v5's went with the prune,
	// and the dropped ones shared v2's).
	if h.Status.Store.Images != 3 || imagesBefore != 4 || res.FreedBytes == 0 {
		t.Errorf("gc: images %d → %d, freed %d bytes", imagesBefore, h.Status.Store.Images, res.FreedBytes)
	}
	// The kept deployments still boot: finalize v4, status consistent.
	s.mustCLI(t, "finalize")
	if h = s.status(t); id(h.Status.Default) != v4ID || id(h.Status.Rollback) != v2ID {
		t.Fatalf("finalize after gc: %s", roles(h))
	}

	// v4 never boots: systemd-boot uses up its three tries and falls back
	// to v2, which keeps running. Rollback must not make the failed v4 the
	// default again: it goes further back, to v1, with v2 as the fallback;
	// booted into v1, rollback brings v2 back.
	entries := filepath.Join(s.boot, "loader", "entries")
	failed := h.Status.Default.Boot.Entry
	exhausted := strings.Replace(failed, "+3.conf", "+0-3.conf", 1)
	if exhausted == failed {
		t.Fatalf("the default entry %s has no +3 counter", failed)
	}
	if err := os.Rename(filepath.Join(entries, failed), filepath.Join(entries, exhausted)); err != nil {
		t.Fatal(err)
	}
	// The boot loader sorts an exhausted entry last: v2 is the default now.
	if h = s.status(t); id(h.Status.Default) != v2ID || id(h.Status.Rollback) != v4ID || h.Status.Rollback.Boot == nil || h.Status.Rollback.Boot.TriesLeft == nil || *h.Status.Rollback.Boot.TriesLeft != 0 {
		t.Fatalf("v4's exhausted entry: %s, %+v", roles(h), h.Status.Rollback)
	}
	res = lastResult(t, s.mustCLI(t, "rollback", "--json"))
	if h = s.status(t); res.Deployment != v1ID || id(h.Status.Default) != v1ID || id(h.Status.Rollback) != v2ID || id(h.Status.Booted) != v2ID {
		t.Fatalf("rollback after v4 failed: %+v, %s", res, roles(h))
	}
	s.setBooted(t, "twinroot="+v1ID+":"+h.Status.Default.Image.ComposefsDigest)
	res = lastResult(t, s.mustCLI(t, "rollback", "--json"))
	if h = s.status(t); res.Deployment != v2ID || id(h.Status.Default) != v2ID || id(h.Status.Rollback) != v1ID {
		t.Fatalf("rollback booted into v1: %+v, %s", res, roles(h))
	}
}
