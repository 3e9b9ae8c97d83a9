package sync

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/pkg/docker/config"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/types"
)

// DefaultRegistriesConf is containers-registries.conf(5)'s system file.
const DefaultRegistriesConf = "/etc/containers/registries.conf"

// systemAuthFile is read after everything containers-auth.json(5) lists:
// a system-wide file for a root service (bootc's equivalent is
// /etc/ostree/auth.json).
const systemAuthFile = "/etc/containers/auth.json"

// noConfigDir is a drop-in directory that never exists, to read no
// drop-ins.
const noConfigDir = "/nonexistent/twinroot/registries.conf.d"

// systemContext is the c/image configuration of a pull: registries.conf
// (with drop-ins), credentials, user agent. registries.conf and its
// drop-ins are read by go.podman.io/image's sysregistriesv2 exactly as
// podman reads them: wildcard prefixes, mirrors with pull-from-mirror,
// blocked, unqualified-search-registries, short-name aliases,
// credential-helpers.
func (o *options) systemContext() *types.SystemContext {
	sys := &types.SystemContext{DockerRegistryUserAgent: o.userAgent}
	switch {
	case o.regConf == "-":
		sys.SystemRegistriesConfPath, sys.SystemRegistriesConfDirPath = os.DevNull, noConfigDir
	case o.regConf != "":
		sys.SystemRegistriesConfPath = o.regConf
	case o.env("CONTAINERS_REGISTRIES_CONF") != "":
		// As c/image treats the variable: that file, no drop-ins.
		sys.SystemRegistriesConfPath, sys.SystemRegistriesConfDirPath = o.env("CONTAINERS_REGISTRIES_CONF"), noConfigDir
	}
	if o.regConfDir != "" {
		sys.SystemRegistriesConfDirPath = o.regConfDir
	}
	if f := o.env("REGISTRY_AUTH_FILE"); f != "" {
		sys.AuthFilePath = f
	}
	return sys
}

// endpoint is one repository to try for an image: a mirror or the primary.
type endpoint struct {
	repo     string // "host[:port]/path"
	insecure bool
	mirror   bool
}

// candidate is one fully qualified name a reference may mean (a short
// name has several), with the endpoints to try for it.
type candidate struct {
	ref       reference.Named // tagged or digested, fully qualified
	endpoints []endpoint
}

// isShortName reports whether a docker reference names no registry: its
// first component has no '.' or ':' and is not "localhost".
func isShortName(s string) bool {
	first, _, found := strings.Cut(s, "/")
	if !found {
		return true
	}
	return !strings.ContainsAny(first, ".:") && first != "localhost"
}

// candidates expands a docker reference (without "docker://") through
// registries.conf: a short name through its alias, else through
// unqualified-search-registries (several only where short-name-mode is not
// "enforcing", since an update agent cannot prompt); then each qualified
// name through the longest matching [[registry]] (prefix, wildcard prefix
// "*.example.com", location rewriting, blocked, mirrors and
// pull-from-mirror, mirror-by-digest-only).
func candidates(sys *types.SystemContext, s string) ([]candidate, error) {
	var names []reference.Named
	if isShortName(s) {
		named, err := reference.ParseNormalizedNamed(s) // validates; docker.io/library/ as a placeholder
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %w", ErrBadReference, s, err)
		}
		bare := reference.FamiliarName(named) // without tag or digest
		alias, _, err := sysregistriesv2.ResolveShortNameAlias(sys, bare)
		if err != nil {
			return nil, fmt.Errorf("%w: short name %q: %w", ErrBadReference, s, err)
		}
		if alias != nil {
			n, err := withTagOrDigest(alias, named)
			if err != nil {
				return nil, err
			}
			names = append(names, n)
		} else {
			search, where, err := sysregistriesv2.UnqualifiedSearchRegistriesWithOrigin(sys)
			if err != nil {
				return nil, fmt.Errorf("registries.conf: %w", err)
			}
			if len(search) == 0 {
				return nil, fmt.Errorf("%w: short name %q has no alias and no unqualified-search-registries are set (%s); use a fully qualified name",
					ErrBadReference, s, sysregistriesv2.ConfigurationSourceDescription(sys))
			}
			mode, err := sysregistriesv2.GetShortNameMode(sys)
			if err != nil {
				return nil, fmt.Errorf("registries.conf: %w", err)
			}
			if mode == types.ShortNameModeEnforcing && len(search) > 1 {
				return nil, fmt.Errorf("%w: short name %q is ambiguous under short-name-mode \"enforcing\": %s lists %d unqualified-search-registries and nothing can prompt; use a fully qualified name or an alias",
					ErrBadReference, s, where, len(search))
			}
			for _, reg := range search {
				n, err := reference.ParseNormalizedNamed(reg + "/" + s)
				if err != nil {
					return nil, fmt.Errorf("%w: %s/%s: %w", ErrBadReference, reg, s, err)
				}
				names = append(names, n)
			}
		}
	} else {
		n, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: %w", ErrBadReference, s, err)
		}
		names = append(names, n)
	}
	out := make([]candidate, 0, len(names))
	for _, n := range names {
		n = reference.TagNameOnly(n) // no tag: :latest
		eps, err := endpointsFor(sys, n)
		if err != nil {
			return nil, err
		}
		out = append(out, candidate{ref: n, endpoints: eps})
	}
	return out, nil
}

// withTagOrDigest puts the tag or digest of from onto name.
func withTagOrDigest(name, from reference.Named) (reference.Named, error) {
	if d, ok := from.(reference.Digested); ok {
		return reference.WithDigest(reference.TrimNamed(name), d.Digest())
	}
	if t, ok := from.(reference.Tagged); ok {
		return reference.WithTag(reference.TrimNamed(name), t.Tag())
	}
	return name, nil
}

// endpointsFor returns where to look for ref, mirrors first.
func endpointsFor(sys *types.SystemContext, ref reference.Named) ([]endpoint, error) {
	reg, err := sysregistriesv2.FindRegistry(sys, ref.String())
	if err != nil {
		return nil, fmt.Errorf("registries.conf: %w", err)
	}
	if reg == nil {
		return []endpoint{{repo: ref.Name()}}, nil
	}
	if reg.Blocked {
		return nil, fmt.Errorf("%w: %s is blocked in registries.conf (prefix %q)", ErrBadReference, ref.Name(), reg.Prefix)
	}
	srcs, err := reg.PullSourcesFromReference(ref)
	if err != nil {
		return nil, fmt.Errorf("registries.conf: %s: %w", ref, err)
	}
	out := make([]endpoint, 0, len(srcs))
	for i, ps := range srcs {
		out = append(out, endpoint{repo: ps.Reference.Name(), insecure: ps.Endpoint.Insecure, mirror: i < len(srcs)-1})
	}
	return out, nil
}

// credentials finds the credentials for repo ("host/path") the way
// containers tools do (go.podman.io/image's pkg/docker/config): each
// --authfile first, then the credential-helpers of registries.conf, which
// default to containers-auth.json(5)'s files ($REGISTRY_AUTH_FILE, the
// per-user runtime file or /run/containers/UID/auth.json,
// $XDG_CONFIG_HOME/containers/auth.json, docker's config.json with its
// credHelpers and credsStore), and last /etc/containers/auth.json.
// Nothing found is anonymous access.
func credentials(sys *types.SystemContext, authFiles []string, repo string) (authn.Authenticator, error) {
	a, _, err := credentialsFrom(sys, authFiles, repo)
	return a, err
}

// credentialsFrom is credentials, also telling whether c/image finds them
// by itself from sys (own is false) or only sync knows them (--authfile,
// /etc/containers/auth.json).
func credentialsFrom(sys *types.SystemContext, authFiles []string, repo string) (a authn.Authenticator, own bool, err error) {
	a, own, err = findCredentials(sys, authFiles, repo)
	if a == nil && err == nil {
		a = authn.Anonymous
	}
	return a, own, err
}

func findCredentials(sys *types.SystemContext, authFiles []string, repo string) (authn.Authenticator, bool, error) {
	try := func(s *types.SystemContext) (authn.Authenticator, error) {
		c, err := config.GetCredentials(s, repo)
		if err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", repo, err)
		}
		if c == (types.DockerAuthConfig{}) {
			return nil, nil
		}
		return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken}), nil
	}
	fileOnly := func(f string) *types.SystemContext {
		s := *sys
		s.AuthFilePath = f
		// containers-auth.json only, not the helpers again.
		s.SystemRegistriesConfPath, s.SystemRegistriesConfDirPath = os.DevNull, noConfigDir
		return &s
	}
	for _, f := range authFiles {
		if _, err := os.Stat(f); err != nil {
			return nil, true, fmt.Errorf("auth file %s: %w", f, err)
		}
		if a, err := try(fileOnly(f)); a != nil || err != nil {
			return a, true, err
		}
	}
	if a, err := try(sys); a != nil || err != nil {
		return a, false, err
	}
	if _, err := os.Stat(systemAuthFile); err == nil {
		if a, err := try(fileOnly(systemAuthFile)); a != nil || err != nil {
			return a, true, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, true, err
	}
	return nil, false, nil
}
