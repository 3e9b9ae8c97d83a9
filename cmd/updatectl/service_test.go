package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceRunCost is twinroot-update.service's ExecStart ("upgrade
// --auto") run twice with nothing new: each run costs one manifest request
// and nothing else (the manifest is the booted one's: no config, no layer),
// counted at the registry. It also reports its progress over sd_notify
// (STATUS=).
func TestServiceRunCost(t *testing.T) {
	needRoot(t)
	reg := newTestRegistry(t)
	s := newScratch(t)
	ref := "docker://" + reg.host + "/os/sample:latest"
	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))
	s.mustCLI(t, append([]string{"install", ref}, netFlags...)...)

	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	msgs := make(chan string, 1024)
	go func() { // systemd reads the socket all the time; so must the test
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()

	for run := 1; run <= 2; run++ {
		reg.manifests.Store(0)
		reg.blobs.Store(0)
		out := s.mustCLI(t, append([]string{"upgrade", "--auto"}, netFlags...)...)
		if !strings.Contains(out, "up to date") {
			t.Errorf("run %d: %q", run, out)
		}
		if m, b := reg.manifests.Load(), reg.blobs.Load(); m != 1 || b != 0 {
			t.Errorf("run %d with nothing new: %d manifest and %d blob requests, want 1 and 0", run, m, b)
		} else {
			t.Logf("run %d with nothing new: %d manifest request, %d blob requests", run, m, b)
		}
		// upgrade --check costs the same, and still names the version.
		reg.manifests.Store(0)
		reg.blobs.Store(0)
		code, out, _ := s.cli(t, append([]string{"upgrade", "--check"}, netFlags...)...)
		if m, b := reg.manifests.Load(), reg.blobs.Load(); code != exitNoUpd || m != 1 || b != 0 || !strings.Contains(out, "version 1") {
			t.Errorf("run %d: upgrade --check with nothing new: exit %d, %d manifest and %d blob requests: %s", run, code, m, b, out)
		}
	}
	// The status lines reached the notify socket.
	var got []string
	for len(msgs) > 0 {
		got = append(got, <-msgs)
	}
	all := strings.Join(got, "\n")
	if !strings.Contains(all, "STATUS=checking "+ref) || !strings.Contains(all, "STATUS="+ref+" is up to date") {
		t.Errorf("sd_notify messages: %q", got)
	}

	// With something new, the service stages it (auto-apply defaults to stage).
	reg.push(t, "os/sample:latest", osImage(t, "2", "6.12.2"))
	out := s.mustCLI(t, append([]string{"upgrade", "--auto"}, netFlags...)...)
	if h := s.status(t); h.Status.Staged == nil || h.Status.Staged.Image.Version != "2" {
		t.Errorf("upgrade --auto with v2 pushed: %s\n%s", roles(h), out)
	}
	// --apply finalizes at once (the switch must not depend on the finalize
	// unit) and then reboots; the test hook skips only the reboot.
	t.Setenv(noRebootEnv, "1")
	reg.push(t, "os/sample:latest", osImage(t, "2.1", "6.12.2"))
	code, out, errOut := s.cli(t, append([]string{"upgrade", "--apply"}, netFlags...)...)
	if h := s.status(t); code != 0 || h.Status.Staged != nil || h.Status.Default == nil || h.Status.Default.Image.Version != "2.1" || !strings.Contains(errOut, "rebooting: skipped") {
		t.Errorf("upgrade --apply: exit %d, %s\n%s%s", code, roles(h), out, errOut)
	}
	// auto-apply = "none" only checks.
	os.MkdirAll(filepath.Join(s.sysroot, "etc", "twinroot"), 0o755)
	os.WriteFile(filepath.Join(s.sysroot, "etc", "twinroot", "config.toml"), []byte("[update]\nauto-apply = \"none\"\n"), 0o644)
	reg.push(t, "os/sample:latest", osImage(t, "3", "6.12.3"))
	out = s.mustCLI(t, append([]string{"upgrade", "--auto"}, netFlags...)...)
	if h := s.status(t); !strings.Contains(out, "update available") || h.Status.Staged != nil || h.Status.Default.Image.Version != "2.1" {
		t.Errorf("auto-apply none: %q, %s", out, roles(h))
	}
}
