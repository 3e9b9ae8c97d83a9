package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/twinroot/twinroot/trust"
)

// withLabels adds config labels to an image.
func withLabels(t *testing.T, img v1.Image, kv ...string) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	for i := 0; i+1 < len(kv); i += 2 {
		cf.Config.Labels[kv[i]] = kv[i+1]
	}
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDowngradeFloorAndSignatureStatus: upgrade refuses an older image
// behind a re-pointed tag, naming both versions, unless --allow-downgrade;
// the signed floor (io.twinroot.min-version) of an installed image refuses
// a replayed old image even then; rollback is the way back. status shows
// the policy verdict of each deployment, and config.toml's
// enforce-container-sigpolicy refuses unverified images unless the flag
// overrides it.
func TestDowngradeFloorAndSignatureStatus(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (deployments keep /etc ownership)")
	}
	reg := newTestRegistry(t)
	s := newScratch(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(policy, []byte(`{"default": [{"type": "insecureAcceptAnything"}]}`), 0o644)
	net := append([]string{"--policy", policy}, netFlags...)
	ref := "docker://" + reg.host + "/os/sample:latest"

	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))
	v1ID := lastResult(t, s.mustCLI(t, append([]string{"install", "--json", ref}, net...)...)).Deployment
	reg.push(t, "os/sample:latest", withLabels(t, osImage(t, "3", "6.12.3"), trust.LabelMinVersion, "2"))
	v3ID := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, net...)...)).Deployment
	s.mustCLI(t, "finalize")
	h := s.status(t)
	s.setBooted(t, "twinroot="+v3ID+":"+h.Status.Default.Image.ComposefsDigest)
	h = s.status(t)
	if id(h.Status.Booted) != v3ID || id(h.Status.Rollback) != v1ID {
		t.Fatalf("booted v3: %s", roles(h))
	}
	for _, e := range []struct {
		name  string
		entry string
		floor string
	}{{"booted", id(h.Status.Booted), "2"}, {"rollback", id(h.Status.Rollback), ""}} {
		b := h.Status.Booted
		if e.name == "rollback" {
			b = h.Status.Rollback
		}
		sg := b.Image.Signature
		if sg == nil || sg.Verified || sg.PolicyEntry != "default" || strings.Join(sg.Requirements, ",") != "insecureAcceptAnything" || sg.Policy != policy || b.Image.MinVersion != e.floor {
			t.Errorf("%s %s: signature %+v, min version %q", e.name, e.entry, sg, b.Image.MinVersion)
		}
	}
	if human := s.mustCLI(t, "status"); !strings.Contains(human, "Signature: not verified by insecureAcceptAnything (default)") || !strings.Contains(human, "Min version: 2") {
		t.Errorf("human status:\n%s", human)
	}
	imagesBefore := h.Status.Store.Images

	// The tag is re-pointed to an older image: refused, naming both.
	reg.push(t, "os/sample:latest", osImage(t, "2", "6.12.2"))
	code, _, errOut := s.cli(t, append([]string{"upgrade"}, net...)...)
	if code == 0 || !strings.Contains(errOut, "refusing to downgrade") || !strings.Contains(errOut, "version 2 is older than the current 3") {
		t.Errorf("upgrade to an older image: exit %d: %s", code, errOut)
	}
	t.Logf("older image: %s", errOut)
	// upgrade --check says no to what upgrade refuses, and why; with
	// --allow-downgrade it says yes.
	code, out, _ := s.cli(t, append([]string{"upgrade", "--check"}, net...)...)
	if code != exitNoUpd || !strings.Contains(out, "would be refused") || !strings.Contains(out, "version 2 is older than the current 3") {
		t.Errorf("upgrade --check on an older image: exit %d: %s", code, out)
	}
	if code, out, _ := s.cli(t, append([]string{"upgrade", "--check", "--allow-downgrade"}, net...)...); code != 0 || !strings.Contains(out, "update available") {
		t.Errorf("upgrade --check --allow-downgrade on an older image: exit %d: %s", code, out)
	}
	if h = s.status(t); h.Status.Staged != nil || h.Status.Store.Images != imagesBefore {
		t.Errorf("a refused downgrade changed something: %s, %d images (was %d)", roles(h), h.Status.Store.Images, imagesBefore)
	}
	// A replayed image below v3's floor is refused even with --allow-downgrade.
	reg.push(t, "os/sample:latest", osImage(t, "1.5", "6.12.1"))
	code, _, errOut = s.cli(t, append([]string{"upgrade", "--allow-downgrade"}, net...)...)
	if code == 0 || !strings.Contains(errOut, "below the signed version floor") || !strings.Contains(errOut, "1.5 is below the minimum 2") {
		t.Errorf("upgrade below the floor: exit %d: %s", code, errOut)
	}
	t.Logf("below the floor: %s", errOut)
	code, out, _ = s.cli(t, append([]string{"upgrade", "--check", "--allow-downgrade", "--json"}, net...)...)
	if code != exitNoUpd || !strings.Contains(out, `"available":false`) || !strings.Contains(out, `"refused":`) || !strings.Contains(out, "1.5 is below the minimum 2") {
		t.Errorf("upgrade --check below the floor: exit %d: %s", code, out)
	}
	// At the floor, --allow-downgrade lets it through.
	reg.push(t, "os/sample:latest", osImage(t, "2", "6.12.2"))
	v2ID := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json", "--allow-downgrade"}, net...)...)).Deployment
	if h = s.status(t); id(h.Status.Staged) != v2ID || ver(h.Status.Staged) != "2" {
		t.Fatalf("allowed downgrade: %s", roles(h))
	}
	// Rollback is the explicit way back, floor or not: v1 next.
	s.mustCLI(t, "rollback")
	if h = s.status(t); id(h.Status.Default) != v1ID || h.Status.Staged != nil {
		t.Fatalf("rollback: %s", roles(h))
	}

	// enforce-container-sigpolicy in config.toml refuses the unverified
	// image, naming the entry; the flag overrides the configuration.
	os.MkdirAll(filepath.Join(s.sysroot, "etc", "twinroot"), 0o755)
	os.WriteFile(filepath.Join(s.sysroot, "etc", "twinroot", "config.toml"), []byte("[update]\nenforce-container-sigpolicy = true\n"), 0o644)
	reg.push(t, "os/sample:latest", osImage(t, "4", "6.12.4"))
	code, _, errOut = s.cli(t, append([]string{"upgrade"}, net...)...)
	if code == 0 || !strings.Contains(errOut, "not verified") || !strings.Contains(errOut, "policy entry default") {
		t.Errorf("enforced upgrade of an unverified image: exit %d: %s", code, errOut)
	}
	t.Logf("enforced: %s", errOut)
	if res := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json", "--enforce-container-sigpolicy=false"}, net...)...)); !res.Changed {
		t.Errorf("upgrade with the flag overriding the configuration: %+v", res)
	}
}
