package main

import (
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// writeLayout puts img into the OCI layout dir under tag, replacing what
// the tag named before.
func writeLayout(t *testing.T, dir, tag string, img v1.Image) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ReplaceImage(img, func(d v1.Descriptor) bool { return d.Annotations["org.opencontainers.image.ref.name"] == tag },
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
}

// TestSwitchOCILayout: an air-gapped machine switches from its registry
// origin to an OCI layout (a USB stick), and later upgrades follow the
// layout's tag.
func TestSwitchOCILayout(t *testing.T) {
	needRoot(t)
	reg := newTestRegistry(t)
	s := newScratch(t)
	reg.push(t, "os/sample:latest", osImage(t, "1", "6.12.1"))
	s.mustCLI(t, append([]string{"install", "docker://" + reg.host + "/os/sample:latest"}, netFlags...)...)

	dir := filepath.Join(t.TempDir(), "usb", "os")
	writeLayout(t, dir, "stable", osImage(t, "2", "6.12.2"))
	ref := "oci:" + dir + ":stable"
	res := lastResult(t, s.mustCLI(t, "switch", "--json", ref))
	h := s.status(t)
	if !res.Changed || id(h.Status.Staged) != res.Deployment || h.Spec.Image == nil || h.Spec.Image.Image != ref || h.Status.Staged.Image.Version != "2" {
		t.Fatalf("switch %s: %+v; %s, spec %+v", ref, res, roles(h), h.Spec.Image)
	}
	if res := lastResult(t, s.mustCLI(t, "upgrade", "--json")); res.Changed {
		t.Errorf("upgrade with the layout unchanged: %+v", res)
	}
	writeLayout(t, dir, "stable", osImage(t, "3", "6.12.3"))
	if code, _, _ := s.cli(t, "upgrade", "--check"); code != 0 {
		t.Errorf("upgrade --check with v3 in the layout: exit %d, want 0", code)
	}
	res = lastResult(t, s.mustCLI(t, "upgrade", "--json"))
	if h = s.status(t); !res.Changed || id(h.Status.Staged) != res.Deployment || h.Status.Staged.Image.Version != "3" {
		t.Fatalf("upgrade from the layout: %+v; %s", res, roles(h))
	}
}
