package sync

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestResolveFetchesNoLayer counts what Resolve asks a registry for: the
// manifest and the config, never a layer blob, and it reports what Pull
// then commits.
func TestResolveFetchesNoLayer(t *testing.T) {
	ctx := context.Background()
	l1 := layerOf(t, tarBytes(t, dir("usr/", 0o755), reg("usr/a", 0o644, randBytes(100000))), "gzip")
	l2 := layerOf(t, tarBytes(t, reg("usr/b", 0o644, randBytes(1000))), "zstd")
	img := imageOf(t, map[string]string{"org.opencontainers.image.version": "2"}, l1, l2)
	var manifests, blobs, layerGets atomic.Int64
	d1, _ := l1.Digest()
	d2, _ := l2.Digest()
	host := memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				switch {
				case strings.Contains(r.URL.Path, "/manifests/"):
					manifests.Add(1)
				case strings.Contains(r.URL.Path, "/blobs/"):
					blobs.Add(1)
					if strings.HasSuffix(r.URL.Path, d1.String()) || strings.HasSuffix(r.URL.Path, d2.String()) {
						layerGets.Add(1)
					}
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	push(t, host, "os/base:v2", img)
	manifests.Store(0)
	blobs.Store(0)
	layerGets.Store(0)

	ref := host + "/os/base:v2"
	r, err := Resolve(ctx, ref, testOpts(WithInsecureRegistries(host))...)
	if err != nil {
		t.Fatal(err)
	}
	if got := manifests.Load(); got != 1 {
		t.Errorf("Resolve made %d manifest requests, want 1", got)
	}
	if got := blobs.Load(); got != 1 {
		t.Errorf("Resolve made %d blob requests, want 1 (the config)", got)
	}
	if got := layerGets.Load(); got != 0 {
		t.Errorf("Resolve requested %d layer blobs, want 0", got)
	}
	want, _ := img.Digest()
	if r.Manifest != want.String() || r.Layers != 2 || r.Labels["org.opencontainers.image.version"] != "2" || r.Source != "docker://"+ref {
		t.Errorf("Resolve = %+v, want manifest %s, 2 layers, version 2", r, want)
	}
	s1, _ := l1.Size()
	s2, _ := l2.Size()
	if r.Size != s1+s2 {
		t.Errorf("Size = %d, want %d", r.Size, s1+s2)
	}
	res, err := Pull(ctx, newStore(t), ref, testOpts(WithInsecureRegistries(host))...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest != r.Manifest || res.Config != r.Config {
		t.Errorf("Pull resolved %s/%s, Resolve %s/%s", res.Manifest, res.Config, r.Manifest, r.Config)
	}
	if layerGets.Load() == 0 {
		t.Error("the layer counter never counted: the test cannot tell")
	}

	if _, err := Resolve(ctx, host+"/os/base:nope", testOpts(WithInsecureRegistries(host))...); err == nil {
		t.Error("Resolve of a missing tag succeeded")
	}
}

// TestErrorClasses: a registry that refuses the credentials gives
// ErrUnauthorized, one that is not listening ErrUnreachable, so the CLI can
// name the fix.
func TestErrorClasses(t *testing.T) {
	ctx := context.Background()
	host := memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, _, ok := r.BasicAuth(); r.Method == http.MethodGet && !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	_, err := Resolve(ctx, host+"/os/auth:1", testOpts(WithInsecureRegistries(host))...)
	if !errors.Is(err, ErrUnauthorized) || !errors.Is(err, ErrFetch) {
		t.Errorf("without credentials: %v, want ErrUnauthorized and ErrFetch", err)
	}
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, err = Resolve(ctx, dead+"/os/x:1", testOpts(WithInsecureRegistries(dead), WithRetry(0, 0))...)
	if !errors.Is(err, ErrUnreachable) || errors.Is(err, ErrUnauthorized) {
		t.Errorf("closed port: %v, want ErrUnreachable", err)
	}
}
