package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// randomImage is a two-layer image for this machine with a version label.
func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(2000, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = map[string]string{"org.opencontainers.image.version": "42"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

var hexLine = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestPullCLI(t *testing.T) {
	sysroot := t.TempDir()
	img := randomImage(t)
	dir := filepath.Join(t.TempDir(), "oci")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}

	// From an OCI layout, creating SYSROOT/twinroot.
	code, out, errOut := runCLI(t, "--sysroot", sysroot, "pull", "--platform", "linux/amd64", "oci:"+dir+":v1")
	if code != 0 {
		t.Fatalf("pull: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	digest := lines[len(lines)-1]
	if !hexLine.MatchString(digest) {
		t.Fatalf("last line %q is not a digest", digest)
	}
	if !strings.Contains(errOut, "layer 1") || !strings.Contains(errOut, "pulled oci:") {
		t.Errorf("progress lines missing: %s", errOut)
	}
	code, out, errOut = runCLI(t, "--sysroot", sysroot, "store", "images")
	if code != 0 || !strings.Contains(out, digest) || !strings.Contains(out, "oci:"+dir+":v1") {
		t.Errorf("store images: exit %d: %s %s", code, out, errOut)
	}

	// From a registry on loopback: refused without --tls-verify=false.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, _ := name.ParseReference(host+"/os/img:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(t.TempDir(), "store")
	code, _, errOut = runCLI(t, "--store", store, "pull", "--registries-conf", "-", "--platform", "linux/amd64", host+"/os/img:v1")
	if code != 1 || !strings.Contains(errOut, "plain HTTP") {
		t.Errorf("insecure registry: exit %d: %s", code, errOut)
	}
	code, out, errOut = runCLI(t, "--store", store, "pull", "--json", "--tls-verify=false", "--registries-conf", "-", "--platform", "linux/amd64", "docker://"+host+"/os/img:v1")
	if code != 0 {
		t.Fatalf("pull --json: exit %d: %s", code, errOut)
	}
	var last map[string]any
	kinds := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		last = nil
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		kinds[last["kind"].(string)] = true
	}
	if last["kind"] != "done" || last["digest"] != digest {
		t.Errorf("last event %v, want done with %s", last, digest)
	}
	for _, k := range []string{"resolved", "layer-start", "layer-done", "committing"} {
		if !kinds[k] {
			t.Errorf("no %q event", k)
		}
	}
	code, out, _ = runCLI(t, "--store", store, "store", "images", "--json")
	if code != 0 || !strings.Contains(out, `"org.opencontainers.image.version": "42"`) || !strings.Contains(out, "docker://"+host+"/os/img:v1") {
		t.Errorf("store images --json: %s", out)
	}

	// Usage errors exit 2.
	if code, _, _ := runCLI(t, "--store", store, "pull"); code != 2 {
		t.Errorf("pull without REF: exit %d", code)
	}
}
