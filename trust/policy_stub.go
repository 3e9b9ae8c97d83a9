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
	"strings"
)

// Engine names the verification backend compiled in.
const Engine = "none (built without containers_image_openpgp)"

// stubPolicy is the shape of containers-policy.json, enough to find the
// entry that applies to an image.
type stubPolicy struct {
	Default    []json.RawMessage                       `json:"default"`
	Transports map[string]map[string][]json.RawMessage `json:"transports"`
}

// stubIdentity approximates c/image's policy identity and namespaces:
// docker "host/repo:tag" → the repository, its parents, the host; a
// layout "DIR[:tag]" → the absolute DIR:tag, DIR, and DIR's parents.
// (Symlinks are not resolved, and docker's *.domain scopes are not
// tried: a scope missed here only makes the stub refuse.)
func stubIdentity(img Image) (string, []string) {
	var ns []string
	if img.Transport == TransportDocker {
		repo := img.Reference
		if i := strings.IndexByte(repo, '@'); i >= 0 {
			repo = repo[:i]
		} else if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
			repo = repo[:i]
		}
		for r := repo; ; {
			ns = append(ns, r)
			i := strings.LastIndexByte(r, '/')
			if i < 0 {
				break
			}
			r = r[:i]
		}
		return img.Reference, ns
	}
	dir, tag := img.Reference, ""
	if i := strings.LastIndexByte(dir, ':'); i >= 0 && !strings.Contains(dir[i+1:], "/") {
		dir, tag = dir[:i], dir[i+1:]
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	for d := dir; ; d = filepath.Dir(d) {
		ns = append(ns, d)
		if d == "/" {
			break
		}
	}
	if tag == "" {
		return dir, ns[1:]
	}
	return dir + ":" + tag, ns
}

// Check, in a build without a signature engine, accepts an image only when
// the entry that applies to it is insecureAcceptAnything alone; any other
// entry is refused with ErrNoEngine, so a policy is never silently ignored.
// Scopes are matched as stubIdentity approximates them.
func Check(ctx context.Context, img Image, opts Options) (Verdict, error) {
	path := opts.PolicyPath
	explicit := path != ""
	if !explicit {
		path = opts.defaultPolicyPath()
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
	identity, namespaces := stubIdentity(img)
	tr, scope := scopeFor(func(t, s string) bool { _, ok := p.Transports[t][s]; return ok },
		func(t string) bool { _, ok := p.Transports[t]; return ok }, img.Transport, identity, namespaces)
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
