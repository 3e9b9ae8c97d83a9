package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// localImage returns an oci Image over a layout directory that exists
// (c/image resolves the path) with a manifest and its digest.
func testLocalImage(t *testing.T) Image {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	os.Mkdir(dir, 0o755)
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`)
	s := sha256.Sum256(m)
	return Image{Transport: TransportOCI, Reference: dir + ":v1", Digest: "sha256:" + hex.EncodeToString(s[:]), Manifest: m,
		MediaType: "application/vnd.oci.image.manifest.v1+json"}
}

func policyFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCheckCommon holds in both builds: with and without the OpenPGP
// engine, insecureAcceptAnything accepts unverified, enforcement refuses
// it, and an unreadable or missing explicit policy is an error.
func TestCheckCommon(t *testing.T) {
	ctx := context.Background()
	img := testLocalImage(t)
	dir := strings.TrimSuffix(img.Reference, ":v1")
	accept := policyFile(t, `{"default":[{"type":"reject"}],"transports":{"oci":{"`+dir+`":[{"type":"insecureAcceptAnything"}]}}}`)
	v, err := Check(ctx, img, Options{PolicyPath: accept})
	if err != nil || v.Verified || v.Entry() != `transports.oci."`+dir+`"` || v.Policy != accept || v.Digest != img.Digest {
		t.Errorf("accept: %+v %v", v, err)
	}
	if _, err := Check(ctx, img, Options{PolicyPath: accept, Enforce: true}); !errors.Is(err, ErrNotVerified) || !strings.Contains(err.Error(), v.Entry()) {
		t.Errorf("enforced: %v", err)
	}
	if _, err := Check(ctx, img, Options{PolicyPath: filepath.Join(t.TempDir(), "missing.json")}); !errors.Is(err, ErrPolicy) {
		t.Errorf("missing explicit policy: %v", err)
	}
	if _, err := Check(ctx, img, Options{PolicyPath: policyFile(t, `{"default":`)}); !errors.Is(err, ErrPolicy) {
		t.Errorf("malformed policy: %v", err)
	}
	// No file at the default path: insecureAcceptAnything, not verified
	// (recorded with Policy ""), and refused under enforcement naming the
	// path it looked for.
	missing := filepath.Join(t.TempDir(), "policy.json")
	v, err = Check(ctx, img, Options{defaultPolicy: missing})
	if err != nil || v.Verified || v.Policy != "" || v.Entry() != "default" {
		t.Errorf("missing default policy: %+v %v", v, err)
	}
	if _, err := Check(ctx, img, Options{defaultPolicy: missing, Enforce: true}); !errors.Is(err, ErrNotVerified) {
		t.Errorf("missing default policy, enforced: %v, want ErrNotVerified", err)
	}
}
