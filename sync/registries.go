package sync

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultRegistriesConf is containers-registries.conf(5)'s system file.
const DefaultRegistriesConf = "/etc/containers/registries.conf"

// registriesConf is the subset of containers-registries.conf(5), version 2,
// that Pull honours: [[registry]] tables matched by prefix (or location)
// on path-component boundaries, with location rewriting, insecure, blocked,
// mirror-by-digest-only, and [[registry.mirror]] with location, insecure
// and pull-from-mirror. Not honoured (reported by unsupported): wildcard
// prefixes ("*.example.com"), unqualified-search-registries and short-name
// aliases (a short name means docker.io, as in go-containerregistry),
// short-name-mode, credential-helpers, the version 1 [registries.*] tables
// and drop-in files under registries.conf.d.
type registriesConf struct {
	Registries []regEntry `toml:"registry"`

	UnqualifiedSearch []string       `toml:"unqualified-search-registries"`
	ShortNameMode     string         `toml:"short-name-mode"`
	CredHelpers       []string       `toml:"credential-helpers"`
	V1                map[string]any `toml:"registries"`
	Aliases           map[string]any `toml:"aliases"`
}

type regEntry struct {
	Prefix             string     `toml:"prefix"`
	Location           string     `toml:"location"`
	Insecure           bool       `toml:"insecure"`
	Blocked            bool       `toml:"blocked"`
	MirrorByDigestOnly bool       `toml:"mirror-by-digest-only"`
	Mirrors            []regEntry `toml:"mirror"`
	PullFromMirror     string     `toml:"pull-from-mirror"`
}

// parseRegistriesConf parses registries.conf text.
func parseRegistriesConf(text string) (*registriesConf, error) {
	var c registriesConf
	if _, err := toml.Decode(text, &c); err != nil {
		return nil, fmt.Errorf("registries.conf: %w", err)
	}
	for i, r := range c.Registries {
		if r.Prefix == "" && r.Location == "" {
			return nil, fmt.Errorf("registries.conf: [[registry]] %d has neither prefix nor location", i+1)
		}
		for _, m := range r.Mirrors {
			if m.Location == "" {
				return nil, fmt.Errorf("registries.conf: mirror of %q without location", r.Location)
			}
			switch m.PullFromMirror {
			case "", "all", "digest-only", "tag-only":
			default:
				return nil, fmt.Errorf("registries.conf: mirror %q: pull-from-mirror %q", m.Location, m.PullFromMirror)
			}
		}
	}
	return &c, nil
}

// loadRegistriesConf reads path; a missing file is an empty configuration.
func loadRegistriesConf(path string) (*registriesConf, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &registriesConf{}, nil
	}
	if err != nil {
		return nil, err
	}
	c, err := parseRegistriesConf(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// unsupported lists the settings present in c that Pull ignores.
func (c *registriesConf) unsupported() []string {
	var out []string
	if len(c.UnqualifiedSearch) > 0 {
		out = append(out, "unqualified-search-registries")
	}
	if c.ShortNameMode != "" {
		out = append(out, "short-name-mode")
	}
	if len(c.CredHelpers) > 0 {
		out = append(out, "credential-helpers")
	}
	if len(c.V1) > 0 {
		out = append(out, "[registries.*] (version 1 format)")
	}
	if len(c.Aliases) > 0 {
		out = append(out, "[aliases]")
	}
	for _, r := range c.Registries {
		if strings.HasPrefix(r.Prefix, "*.") {
			out = append(out, "wildcard prefix "+r.Prefix)
		}
	}
	return out
}

// endpoint is one repository to try for an image: a mirror or the primary.
type endpoint struct {
	repo     string // "host[:port]/path"
	insecure bool
	mirror   bool
}

// prefixMatch reports whether repo lies under prefix on component
// boundaries ("quay.io/a" matches "quay.io/a" and "quay.io/a/b", not
// "quay.io/ab").
func prefixMatch(repo, prefix string) bool {
	if !strings.HasPrefix(repo, prefix) {
		return false
	}
	rest := repo[len(prefix):]
	return rest == "" || rest[0] == '/' || strings.HasSuffix(prefix, "/")
}

// endpoints returns where to look for repo ("host/path", docker.io
// spelled "docker.io"), mirrors first, for a reference by digest or by tag.
func (c *registriesConf) endpoints(repo string, byDigest bool) ([]endpoint, error) {
	var best *regEntry
	bestLen := -1
	for i := range c.Registries {
		r := &c.Registries[i]
		p := r.Prefix
		if p == "" {
			p = r.Location
		}
		if strings.HasPrefix(p, "*.") {
			continue // wildcards not honoured
		}
		if prefixMatch(repo, p) && len(p) > bestLen {
			best, bestLen = r, len(p)
		}
	}
	if best == nil {
		return []endpoint{{repo: repo}}, nil
	}
	if best.Blocked {
		return nil, fmt.Errorf("%w: %s is blocked in registries.conf", ErrBadReference, repo)
	}
	rest := repo[bestLen:]
	var out []endpoint
	if !best.MirrorByDigestOnly || byDigest {
		for _, m := range best.Mirrors {
			if (m.PullFromMirror == "digest-only" && !byDigest) || (m.PullFromMirror == "tag-only" && byDigest) {
				continue
			}
			out = append(out, endpoint{repo: m.Location + rest, insecure: m.Insecure, mirror: true})
		}
	}
	loc := best.Location
	if loc == "" {
		loc = best.Prefix
	}
	return append(out, endpoint{repo: loc + rest, insecure: best.Insecure}), nil
}
