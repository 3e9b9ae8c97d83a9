// Package trust decides whether an image may be installed: it evaluates
// containers-policy.json(5) for the image the way podman, skopeo and bootc
// do (the policy engine is go.podman.io/image/v5/signature itself), and it
// orders image versions so that an update never silently goes backwards.
//
// Signature verification is compiled in with the build tag
// containers_image_openpgp (the pure-Go OpenPGP backend of
// go.podman.io/image; without the tag that library needs cgo and gpgme).
// A build without the tag still compiles: it accepts an image only when the
// policy that applies to it is insecureAcceptAnything, and refuses every
// other policy with ErrNoEngine instead of ignoring it.
package trust

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.podman.io/image/v5/types"
)

// Default locations, as containers-policy.json(5) and
// containers-registries.d(5) name them.
const (
	DefaultPolicyPath    = "/etc/containers/policy.json"
	DefaultRegistriesDir = "/etc/containers/registries.d"
)

// Errors returned by Check, wrapped with the image and the policy entry.
var (
	// ErrRejected: the policy does not accept the image (a reject entry, a
	// missing or invalid signature, a signature of another image).
	ErrRejected = errors.New("trust: image rejected by signature policy")
	// ErrNotVerified: enforcement is on and the entry that applies to the
	// image verifies no signature (insecureAcceptAnything).
	ErrNotVerified = errors.New("trust: signature policy enforced but the image is not verified")
	// ErrPolicy: the policy file cannot be read or parsed.
	ErrPolicy = errors.New("trust: bad signature policy")
	// ErrNoEngine: this binary was built without the containers_image_openpgp
	// tag and cannot evaluate the policy that applies to the image.
	ErrNoEngine = errors.New("trust: built without signature verification (build tag containers_image_openpgp)")
	// ErrDowngrade: a candidate image is older than the image it replaces.
	ErrDowngrade = errors.New("trust: refusing to downgrade")
	// ErrBelowFloor: a candidate image is older than the minimum version
	// the image it replaces allows (its signed floor label).
	ErrBelowFloor = errors.New("trust: image below the signed version floor")
)

// Transports Check knows, as policy.json names them.
const (
	TransportDocker     = "docker"
	TransportOCI        = "oci"
	TransportOCIArchive = "oci-archive"
)

// Image is what the policy is evaluated for: the top-level manifest (an
// index or an image manifest) that a reference resolved to.
type Image struct {
	// Transport is TransportDocker, TransportOCI or TransportOCIArchive.
	Transport string
	// Reference is the reference within the transport as the user gave it:
	// "host/repo:tag" or "host/repo@sha256:..." (docker, fully qualified),
	// "DIR[:tag]" (oci), "FILE[:tag]" (oci-archive).
	Reference string
	// Digest is the top-level manifest's digest ("sha256:..."): the one
	// signatures must name, and the one the caller then pulls.
	Digest string
	// Manifest and MediaType are the top-level manifest as fetched and
	// verified against Digest by the caller (used for local transports;
	// docker sources fetch the manifest again by Digest).
	Manifest  []byte
	MediaType string
}

// Options configure Check.
type Options struct {
	// PolicyPath is the containers-policy.json file ("" = DefaultPolicyPath).
	// A missing file at the default path is treated as a policy of
	// insecureAcceptAnything (the image is then not verified, and
	// enforcement refuses it); a missing explicit file is an error. podman
	// and skopeo instead refuse to pull without a policy file.
	PolicyPath string
	// RegistriesDir is the registries.d directory with lookaside and
	// use-sigstore-attachments settings ("" = DefaultRegistriesDir).
	RegistriesDir string
	// Enforce refuses an image that the applicable entry does not verify
	// by signature (bootc's --enforce-container-sigpolicy).
	Enforce bool
	// System carries registry settings for docker sources: registries.conf
	// paths, TLS, credentials, user agent. It is copied, never modified.
	System *types.SystemContext
	// defaultPolicy replaces DefaultPolicyPath (tests of the missing
	// default file).
	defaultPolicy string
	// Credentials, when set, is asked for credentials c/image would not
	// find through System by itself, only when signatures are read from a
	// registry; nil credentials leave c/image's own lookup.
	Credentials func() (*types.DockerAuthConfig, error)
}

// defaultPolicyPath is the policy read when PolicyPath is "".
func (o Options) defaultPolicyPath() string {
	if o.defaultPolicy != "" {
		return o.defaultPolicy
	}
	return DefaultPolicyPath
}

// Verdict records how an accepted image was judged, for provenance and
// for status to show.
type Verdict struct {
	// Verified is true when the entry verified at least one signature
	// (signedBy, sigstoreSigned).
	Verified bool `json:"verified"`
	// Transport and Scope name the policy entry that applied:
	// transports[Transport][Scope]; Scope "" is the transport's default
	// entry, and Transport "" the policy's top-level default.
	Transport string `json:"transport,omitempty"`
	Scope     string `json:"scope,omitempty"`
	// Requirements are the types of the entry's requirements, in order.
	Requirements []string `json:"requirements,omitempty"`
	// Policy is the policy file evaluated ("" when none existed).
	Policy string `json:"policy,omitempty"`
	// Digest is the manifest digest the signatures were checked against.
	Digest string `json:"digest,omitempty"`
}

// Entry names the policy entry the way an operator finds it in
// policy.json: `transports.docker."quay.io/org"`, `transports.oci.""` or
// `default`.
func (v Verdict) Entry() string {
	return entryName(v.Transport, v.Scope)
}

func entryName(transport, scope string) string {
	if transport == "" {
		return "default"
	}
	return fmt.Sprintf("transports.%s.%q", transport, scope)
}

// String is a one-line summary: "verified by signedBy (transports.docker."x")".
func (v Verdict) String() string {
	state := "not verified"
	if v.Verified {
		state = "verified"
	}
	return fmt.Sprintf("%s by %s (%s)", state, strings.Join(v.Requirements, "+"), v.Entry())
}

// requirementTypes returns the "type" of each requirement in a policy
// entry, given as raw JSON objects or anything that marshals to them.
func requirementTypes[T any](reqs []T) ([]string, error) {
	out := make([]string, 0, len(reqs))
	for _, r := range reqs {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		var t struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(b, &t); err != nil {
			return nil, err
		}
		out = append(out, t.Type)
	}
	return out, nil
}

// onlyAcceptAnything reports whether every requirement is
// insecureAcceptAnything.
func onlyAcceptAnything(types []string) bool {
	for _, t := range types {
		if t != "insecureAcceptAnything" {
			return false
		}
	}
	return len(types) > 0
}

// scopeFor picks the policy entry for an image as c/image's
// PolicyContext.requirementsForImageRef does: the transport's entry for
// the identity, then for each namespace in order, then the transport's ""
// entry, then the policy default. has reports whether transports[t][scope]
// exists.
func scopeFor(has func(transport, scope string) bool, hasTransport func(string) bool, transport, identity string, namespaces []string) (string, string) {
	if !hasTransport(transport) {
		return "", ""
	}
	if has(transport, identity) {
		return transport, identity
	}
	for _, n := range namespaces {
		if has(transport, n) {
			return transport, n
		}
	}
	if has(transport, "") {
		return transport, ""
	}
	return "", ""
}
