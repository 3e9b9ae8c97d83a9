//go:build !containers_image_openpgp

package trust

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Engine names the verification backend compiled in.
const Engine = "none (built without containers_image_openpgp)"

// stubPolicy is the shape of containers-policy.json, enough to find the
// entry that applies to an image.
type stubPolicy struct {
	Default    []json.RawMessage                       `json:"default"`
	Transports map[string]map[string][]json.RawMessage `json:"transports"`
}

// Check, in a build without a signature engine, accepts an image only when
// the entry that applies to it is insecureAcceptAnything alone; any other
// entry is refused with ErrNoEngine, so a policy is never silently ignored.
// Scopes are matched by identity and the transport default only (no
// namespace walk): a namespace-scoped entry is not found here, which can
// only make the stub fall back to a broader entry and then refuse.
func Check(ctx context.Context, img Image, opts Options) (Verdict, error) {
	path := opts.PolicyPath
	explicit := path != ""
	if !explicit {
		path = DefaultPolicyPath
	}
	var p stubPolicy
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
		path = ""
		p.Default = []json.RawMessage{json.RawMessage(`{"type":"insecureAcceptAnything"}`)}
	case err != nil:
		return Verdict{}, fmt.Errorf("%w: %w", ErrPolicy, err)
	default:
		if err := json.Unmarshal(b, &p); err != nil {
			return Verdict{}, fmt.Errorf("%w: %s: %w", ErrPolicy, path, err)
		}
	}
	identity := img.Reference
	if img.Transport != TransportDocker {
		if abs, err := filepath.Abs(identity); err == nil {
			identity = abs
		}
	}
	tr, scope := scopeFor(func(t, s string) bool { _, ok := p.Transports[t][s]; return ok },
		func(t string) bool { _, ok := p.Transports[t]; return ok }, img.Transport, identity, nil)
	reqs := p.Default
	if tr != "" {
		reqs = p.Transports[tr][scope]
	}
	kinds, err := requirementTypes(reqs)
	if err != nil {
		return Verdict{}, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	v := Verdict{Transport: tr, Scope: scope, Requirements: kinds, Policy: path, Digest: img.Digest}
	name := img.Transport + ":" + img.Reference
	if opts.Enforce {
		return v, fmt.Errorf("%w: %s: policy entry %s: %w", ErrNotVerified, name, v.Entry(), ErrNoEngine)
	}
	if !onlyAcceptAnything(kinds) {
		return v, fmt.Errorf("%w: %s: policy entry %s requires %v", ErrNoEngine, name, v.Entry(), kinds)
	}
	return v, nil
}
