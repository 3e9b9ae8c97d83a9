//go:build !containers_image_openpgp

package trust

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestStubRefusesWhatItCannotEvaluate: without the OpenPGP engine a
// signature requirement, and even reject, is refused with ErrNoEngine
// rather than ignored.
func TestStubRefusesWhatItCannotEvaluate(t *testing.T) {
	img := testLocalImage(t)
	for _, req := range []string{`{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}`, `{"type":"reject"}`} {
		p := policyFile(t, `{"default":[`+req+`]}`)
		if _, err := Check(context.Background(), img, Options{PolicyPath: p}); !errors.Is(err, ErrNoEngine) || !strings.Contains(err.Error(), "default") {
			t.Errorf("%s: %v", req, err)
		}
	}
}
