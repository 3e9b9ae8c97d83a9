package sync

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// authEntry is one "auths" value of containers-auth.json(5) / docker's
// config.json.
type authEntry struct {
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
}

// parseAuthFile parses an auth.json into normalised keys ("host[/path]")
// and credentials.
func parseAuthFile(b []byte) (map[string]authn.AuthConfig, error) {
	var f struct {
		Auths map[string]authEntry `json:"auths"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	out := map[string]authn.AuthConfig{}
	for k, e := range f.Auths {
		var c authn.AuthConfig
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("auths[%q]: %w", k, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("auths[%q]: auth is not user:password", k)
			}
			c.Username, c.Password = user, pass
		}
		c.IdentityToken = e.IdentityToken
		out[normaliseAuthKey(k)] = c
	}
	return out, nil
}

// normaliseAuthKey turns legacy docker keys ("https://index.docker.io/v1/")
// into "host[/path]" form, with docker.io for Docker Hub.
func normaliseAuthKey(k string) string {
	if s, ok := strings.CutPrefix(k, "https://"); ok {
		k, _, _ = strings.Cut(s, "/")
	} else if s, ok := strings.CutPrefix(k, "http://"); ok {
		k, _, _ = strings.Cut(s, "/")
	}
	k = strings.TrimSuffix(k, "/")
	if k == "index.docker.io" || k == "registry-1.docker.io" {
		k = "docker.io"
	}
	if s, ok := strings.CutPrefix(k, "index.docker.io/"); ok {
		k = "docker.io/" + s
	}
	return k
}

// lookupAuth finds the most specific entry for repo ("host/path"): the
// whole repository, then each parent namespace, then the host.
func lookupAuth(m map[string]authn.AuthConfig, repo string) (authn.AuthConfig, bool) {
	repo = normaliseAuthKey(repo)
	for k := repo; ; {
		if c, ok := m[k]; ok {
			return c, true
		}
		i := strings.LastIndexByte(k, '/')
		if i < 0 {
			return authn.AuthConfig{}, false
		}
		k = k[:i]
	}
}

// keychain finds registry credentials the way containers tools do: the
// given auth files, $REGISTRY_AUTH_FILE, the per-user runtime file
// ($XDG_RUNTIME_DIR/containers/auth.json, or /run/containers/UID/auth.json
// for a service without a runtime dir), /etc/containers/auth.json, and
// last docker's config through go-containerregistry's default keychain.
type keychain struct {
	files  []string
	docker authn.Keychain
}

func newKeychain(extra []string, getenv func(string) string) *keychain {
	files := append([]string(nil), extra...)
	if f := getenv("REGISTRY_AUTH_FILE"); f != "" {
		files = append(files, f)
	}
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		files = append(files, d+"/containers/auth.json")
	} else {
		files = append(files, fmt.Sprintf("/run/containers/%d/auth.json", os.Getuid()))
	}
	files = append(files, "/etc/containers/auth.json")
	return &keychain{files: files, docker: authn.DefaultKeychain}
}

// resolve returns the authenticator for repo ("host/path"). A file that
// does not parse is an error naming it; a missing file is skipped.
func (k *keychain) resolve(repo authn.Resource) (authn.Authenticator, error) {
	key := repo.RegistryStr()
	if s := repo.String(); s != "" {
		key = s
	}
	for _, f := range k.files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, err := parseAuthFile(b)
		if err != nil {
			return nil, fmt.Errorf("auth file %s: %w", f, err)
		}
		if c, ok := lookupAuth(m, key); ok {
			return authn.FromConfig(c), nil
		}
	}
	return k.docker.Resolve(repo)
}
