//go:build containers_image_openpgp

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/twinroot/twinroot/trust"
)

// TestSignedFloorRefusesReplay: every image is signed with GPG (skopeo
// --sign-by, a throwaway keyring, a lookaside store) and the policy
// requires the signature. An attacker re-points the tag to an old image
// that is still validly signed: the policy accepts it, and the signed floor
// of the booted image refuses it, even with --allow-downgrade. status shows
// each deployment verified by the signedBy entry.
func TestSignedFloorRefusesReplay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (deployments keep /etc ownership)")
	}
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg not installed (Debian package gnupg)")
	}
	reg := newTestRegistry(t)
	s := newScratch(t)
	dir := t.TempDir()
	home, err := os.MkdirTemp("", "tw-gpg-")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "GNUPGHOME="+home)
	t.Cleanup(func() {
		c := exec.Command("gpgconf", "--kill", "all")
		c.Env = env
		c.Run()
		os.RemoveAll(home)
	})
	gpg := func(args ...string) []byte {
		c := exec.Command("gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		c.Env = env
		out, err := c.Output()
		if err != nil {
			t.Fatalf("gpg %v: %v", args, err)
		}
		return out
	}
	gpg("--quick-gen-key", "floor <floor@twinroot.test>", "ed25519", "sign", "never")
	fpr := ""
	for _, l := range strings.Split(string(gpg("--list-keys", "--with-colons")), "\n") {
		if f := strings.Split(l, ":"); f[0] == "fpr" && fpr == "" {
			fpr = f[9]
		}
	}
	pub := filepath.Join(dir, "key.gpg")
	os.WriteFile(pub, gpg("--export", fpr), 0o644)
	regD := filepath.Join(dir, "registries.d")
	os.Mkdir(regD, 0o755)
	os.WriteFile(filepath.Join(regD, "t.yaml"), []byte(fmt.Sprintf("docker:\n  %s:\n    lookaside: file://%s/sigs\n    lookaside-staging: file://%s/sigs\n", reg.host, dir, dir)), 0o644)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(fmt.Sprintf(`{"default": [{"type": "reject"}], "transports": {"docker": {%q: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": %q}]}}}`,
		reg.host+"/os", pub)), 0o644)
	// signedPush copies img, signed, to the tag.
	n := 0
	signedPush := func(img v1.Image) {
		n++
		lay := filepath.Join(dir, fmt.Sprintf("layout%d", n))
		p, err := layout.Write(lay, empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "x"})); err != nil {
			t.Fatal(err)
		}
		c := exec.Command("skopeo", "--insecure-policy", "--registries.d", regD, "copy", "-q", "--dest-tls-verify=false", "--sign-by", fpr,
			"oci:"+lay+":x", "docker://"+reg.host+"/os/sample:latest")
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("skopeo: %v\n%s", err, out)
		}
	}
	net := append([]string{"--policy", policy, "--registries.d", regD, "--enforce-container-sigpolicy"}, netFlags...)
	ref := "docker://" + reg.host + "/os/sample:latest"

	signedPush(osImage(t, "1", "6.12.1"))
	v1ID := lastResult(t, s.mustCLI(t, append([]string{"install", "--json", ref}, net...)...)).Deployment
	signedPush(withLabels(t, osImage(t, "3", "6.12.3"), trust.LabelMinVersion, "2"))
	v3ID := lastResult(t, s.mustCLI(t, append([]string{"upgrade", "--json"}, net...)...)).Deployment
	s.mustCLI(t, "finalize")
	h := s.status(t)
	s.setBooted(t, "twinroot="+v3ID+":"+h.Status.Default.Image.ComposefsDigest)
	h = s.status(t)
	if id(h.Status.Booted) != v3ID || id(h.Status.Rollback) != v1ID {
		t.Fatalf("roles: %s", roles(h))
	}
	for name, e := range map[string]string{"booted": "b", "rollback": "r"} {
		be := h.Status.Booted
		if e == "r" {
			be = h.Status.Rollback
		}
		sg := be.Image.Signature
		if sg == nil || !sg.Verified || sg.PolicyEntry != fmt.Sprintf(`transports.docker.%q`, reg.host+"/os") || strings.Join(sg.Requirements, ",") != "signedBy" {
			t.Errorf("%s: signature %+v", name, sg)
		}
	}
	human := s.mustCLI(t, "status")
	if !strings.Contains(human, "Signature: verified by signedBy") {
		t.Errorf("human status:\n%s", human)
	}

	// The replay: the tag re-pointed to the old manifest, whose original
	// signature is still in the lookaside store.
	oldRef, err := name.ParseReference(reg.host+"/os/sample@"+h.Status.Rollback.Image.ManifestDigest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(oldRef)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(reg.host+"/os/sample:latest", name.Insecure)
	if err := remote.Tag(tag, desc); err != nil {
		t.Fatal(err)
	}
	imagesBefore := h.Status.Store.Images
	code, _, errOut := s.cli(t, append([]string{"upgrade", "--allow-downgrade"}, net...)...)
	if code == 0 || !strings.Contains(errOut, "below the signed version floor") || !strings.Contains(errOut, "version 1 is below the minimum 2") {
		t.Errorf("replayed signed image: exit %d: %s", code, errOut)
	}
	t.Logf("replay: %s", errOut)
	if h = s.status(t); h.Status.Staged != nil || h.Status.Store.Images != imagesBefore {
		t.Errorf("the refused replay changed something: %s, %d images (was %d)", roles(h), h.Status.Store.Images, imagesBefore)
	}
	// Rollback to the installed old deployment is still possible.
	s.mustCLI(t, "rollback")
	if h = s.status(t); id(h.Status.Default) != v1ID {
		t.Errorf("rollback: %s", roles(h))
	}
}
