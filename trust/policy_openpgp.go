//go:build containers_image_openpgp

package trust

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/image"
	"go.podman.io/image/v5/oci/archive"
	"go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
)

// Engine names the verification backend compiled in.
const Engine = "go.podman.io/image/v5/signature (containers_image_openpgp)"

// loadPolicy reads the policy; a missing file at the default path is a
// policy of insecureAcceptAnything with path "".
func loadPolicy(path, defaultPath string) (string, *signature.Policy, error) {
	explicit := path != ""
	if !explicit {
		path = defaultPath
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !explicit {
		return "", &signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}}, nil
	}
	p, err := signature.NewPolicyFromFile(path)
	if err != nil {
		return path, nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	return path, p, nil
}

// reference maps img onto c/image's reference for its transport, which
// gives the policy identity and namespaces podman would use.
func reference(img Image) (types.ImageReference, error) {
	var ref types.ImageReference
	var err error
	switch img.Transport {
	case TransportDocker:
		ref, err = docker.ParseReference("//" + img.Reference)
	case TransportOCI:
		ref, err = layout.ParseReference(img.Reference)
	case TransportOCIArchive:
		ref, err = archive.ParseReference(img.Reference)
	default:
		return nil, fmt.Errorf("%w: unknown transport %q", ErrPolicy, img.Transport)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s:%s: %w", ErrPolicy, img.Transport, img.Reference, err)
	}
	return ref, nil
}

// Check evaluates the policy for img. It returns the verdict when the
// policy accepts the image, else an error wrapping ErrRejected,
// ErrNotVerified or ErrPolicy that names the policy entry. Signatures of
// docker images come from the registry's sigstore attachments or the
// lookaside store registries.d names, read by c/image's docker transport
// for exactly img.Digest; local layouts carry none (as in c/image).
func Check(ctx context.Context, img Image, opts Options) (Verdict, error) {
	path, pol, err := loadPolicy(opts.PolicyPath, opts.defaultPolicyPath())
	if err != nil {
		return Verdict{}, err
	}
	ref, err := reference(img)
	if err != nil {
		return Verdict{}, err
	}
	tr, scope := scopeFor(func(t, s string) bool { _, ok := pol.Transports[t][s]; return ok },
		func(t string) bool { _, ok := pol.Transports[t]; return ok },
		ref.Transport().Name(), ref.PolicyConfigurationIdentity(), ref.PolicyConfigurationNamespaces())
	reqs := pol.Default
	if tr != "" {
		reqs = pol.Transports[tr][scope]
	}
	kinds, err := requirementTypes(reqs)
	if err != nil {
		return Verdict{}, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	v := Verdict{Verified: verifying(kinds), Transport: tr, Scope: scope, Requirements: kinds, Policy: path, Digest: img.Digest}
	name := img.Transport + ":" + img.Reference
	where := path
	if where == "" {
		where = opts.defaultPolicyPath() + " (missing: insecureAcceptAnything)"
	}
	if opts.Enforce && !v.Verified {
		return v, fmt.Errorf("%w: %s: policy entry %s in %s requires %v", ErrNotVerified, name, v.Entry(), where, kinds)
	}
	if onlyAcceptAnything(kinds) {
		return v, nil // nothing to read: the entry accepts without looking
	}
	pc, err := signature.NewPolicyContext(pol)
	if err != nil {
		return v, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	defer pc.Destroy() //nolint:errcheck // state bookkeeping only
	pc.RequireSignatureVerification(opts.Enforce)

	unparsed, closeSrc, err := unparsedImage(ctx, ref, img, opts)
	if err != nil {
		return v, fmt.Errorf("%w: %s: policy entry %s in %s: reading signatures: %w", ErrRejected, name, v.Entry(), where, err)
	}
	defer closeSrc()
	ok, err := pc.IsRunningImageAllowed(ctx, unparsed)
	if !ok {
		if err == nil {
			err = errors.New("not allowed")
		}
		return v, fmt.Errorf("%w: %s (manifest %s): policy entry %s in %s requires %v: %w", ErrRejected, name, img.Digest, v.Entry(), where, kinds, err)
	}
	return v, nil
}

// unparsedImage is what the policy engine reads. For docker it is
// c/image's own source over the registry, pinned to img.Digest (the
// manifest is fetched by that digest and checked against it, signatures
// are those of that digest); its Reference stays the user's tag, so
// signedIdentity matching is podman's. Local layouts hold no signatures
// in c/image, so they get a small adapter over the manifest the caller
// already verified.
func unparsedImage(ctx context.Context, ref types.ImageReference, img Image, opts Options) (types.UnparsedImage, func(), error) {
	d, err := digest.Parse(img.Digest)
	if err != nil {
		return nil, nil, err
	}
	if img.Transport != TransportDocker {
		if d.Validate() != nil || d.Algorithm().FromBytes(img.Manifest) != d {
			return nil, nil, fmt.Errorf("manifest does not match %s", d)
		}
		return &localImage{ref: ref, manifest: img.Manifest, mediaType: img.MediaType}, func() {}, nil
	}
	sys := types.SystemContext{}
	if opts.System != nil {
		sys = *opts.System
	}
	if opts.Credentials != nil {
		c, err := opts.Credentials()
		if err != nil {
			return nil, nil, err
		}
		if c != nil {
			sys.DockerAuthConfig = c
		}
	}
	sys.RegistriesDirPath = opts.RegistriesDir
	if sys.RegistriesDirPath == "" {
		sys.RegistriesDirPath = DefaultRegistriesDir
	}
	src, err := ref.NewImageSource(ctx, &sys)
	if err != nil {
		return nil, nil, err
	}
	return image.UnparsedInstance(src, &d), func() { src.Close() }, nil
}

// localImage is a types.UnparsedImage over a verified manifest without
// signatures.
type localImage struct {
	ref       types.ImageReference
	manifest  []byte
	mediaType string
}

var _ types.UnparsedImage = (*localImage)(nil)

func (l *localImage) Reference() types.ImageReference { return l.ref }
func (l *localImage) Manifest(context.Context) ([]byte, string, error) {
	return l.manifest, l.mediaType, nil
}
func (l *localImage) Signatures(context.Context) ([][]byte, error) { return nil, nil }

// verifying reports whether a requirement type checks signatures of the
// whole image (what c/image's RequireSignatureVerification counts).
func verifying(types []string) bool {
	for _, t := range types {
		if t == "signedBy" || t == "sigstoreSigned" {
			return true
		}
	}
	return false
}
