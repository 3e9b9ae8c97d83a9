package sync

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRegistriesConfDropInMirrorHelper: a podman-style configuration is
// honoured as podman honours it. A drop-in file (not the main
// registries.conf) maps a wildcard prefix *.twinroot.test to an
// unreachable location with a mirror on a loopback registry that needs
// credentials, which only a credential helper (a small script named in
// credential-helpers) hands out.
func TestRegistriesConfDropInMirrorHelper(t *testing.T) {
	ctx := context.Background()
	host := memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if r.Method == http.MethodGet && !(ok && u == "helper-user" && p == "helper-secret") {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	img := imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID=mirror\n", 10)))), "gzip"))
	push(t, host, "mirror/os/app:v1", img)

	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	log := filepath.Join(dir, "helper.log")
	// docker-credential-helpers protocol: "get" with the server on stdin,
	// JSON credentials on stdout.
	os.WriteFile(filepath.Join(bin, "docker-credential-twtest"), []byte(fmt.Sprintf(`#!/bin/sh
[ "$1" = get ] || exit 1
read server
echo "$server" >> %s
printf '{"ServerURL":"%%s","Username":"helper-user","Secret":"helper-secret"}' "$server"
`, log)), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	conf := filepath.Join(dir, "registries.conf")
	os.WriteFile(conf, []byte("# the main file says nothing\n"), 0o644)
	dropins := filepath.Join(dir, "registries.conf.d")
	os.Mkdir(dropins, 0o755)
	os.WriteFile(filepath.Join(dropins, "50-twinroot.conf"), []byte(fmt.Sprintf(`
credential-helpers = ["twtest"]
[aliases]
"sample" = "os.twinroot.test/os/app"
[[registry]]
prefix = "*.twinroot.test"
location = "127.0.0.1:1/unreachable"
[[registry.mirror]]
location = "%s/mirror"
insecure = true
`, host)), 0o644)
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, []byte(`{"auths":{}}`), 0o600)
	env := func(k string) string {
		if k == "REGISTRY_AUTH_FILE" {
			return empty // keep the host's auth files out
		}
		return ""
	}
	opts := append(testOpts(), WithRegistriesConf(conf), WithEnv(env))

	s := newStore(t)
	res, err := Pull(ctx, s, "os.twinroot.test/os/app:v1", append(opts, WithRegistriesConfDir(dropins))...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.ConfigName()
	if res.Config != want.String() || res.Source != "docker://os.twinroot.test/os/app:v1" {
		t.Errorf("pulled %+v, want config %s from the mirror under the original name", res, want)
	}
	b, _ := os.ReadFile(log)
	if !strings.Contains(string(b), host) {
		t.Errorf("credential helper asked for %q, want %s", b, host)
	}
	// A short name through the drop-in's alias, then the same wildcard
	// mirror, provenance under the alias target.
	res, err = Pull(ctx, newStore(t), "sample:v1", append(opts, WithRegistriesConfDir(dropins))...)
	if err != nil || res.Source != "docker://os.twinroot.test/os/app:v1" || res.Config != want.String() {
		t.Errorf("short name via alias: %+v %v", res, err)
	}
	// Without the drop-in directory nothing maps the name: the pull fails.
	if _, err := Pull(ctx, newStore(t), "os.twinroot.test/os/app:v1", append(opts, WithRegistriesConfDir(filepath.Join(dir, "none")), WithRetry(0, 0))...); err == nil {
		t.Error("pull without the drop-in succeeded")
	}
}
