package sync

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// dockerRegistry is a Debian docker-registry (distribution 2.x) on loopback.
type dockerRegistry struct {
	host string
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDockerRegistry starts /usr/bin/docker-registry with filesystem
// storage in a temp dir and waits until /v2/ answers.
func startDockerRegistry(t testing.TB) *dockerRegistry {
	t.Helper()
	dir := t.TempDir()
	host := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s/data
http:
  addr: %s
`, dir, host)
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/docker-registry", "serve", cfg)
	logf, _ := os.Create(filepath.Join(dir, "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("docker-registry: %v", err)
	}
	r := &dockerRegistry{host: host, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(r.done) }()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		select {
		case <-r.done:
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("docker-registry exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s did not come up: %v", host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *dockerRegistry) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Kill()
	<-r.done
}

// skopeoPush copies an OCI layout image into a registry with skopeo.
func skopeoPush(t testing.TB, src, dst string, all bool) {
	t.Helper()
	args := []string{"--insecure-policy", "copy", "-q", "--dest-tls-verify=false"}
	if all {
		args = append(args, "--all")
	}
	args = append(args, src, dst)
	out, err := exec.Command("skopeo", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo %v: %v\n%s", args, err, out)
	}
}

func TestDockerRegistryFeatures(t *testing.T) {
	ctx := context.Background()
	reg := startDockerRegistry(t)
	img, _ := featureImage(t)
	dir := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, dir, "v1", img)
	skopeoPush(t, "oci:"+dir+":v1", "docker://"+reg.host+"/os/feature:v1", false)

	s := newStore(t)
	res, err := Pull(ctx, s, "docker://"+reg.host+"/os/feature:v1", testOpts(WithInsecureRegistries(reg.host))...)
	if err != nil {
		t.Fatal(err)
	}
	// skopeo re-serialises the manifest; the config blob is unchanged.
	cd, _ := img.ConfigName()
	if res.Config != cd.String() {
		t.Errorf("config %s, want %s", res.Config, cd)
	}
	got := scanDir(t, mountImage(t, s, res.Digest))
	delete(got["srv/acl"].Xattrs, "system.posix_acl_access")
	diffTrees(t, expectedTree(t, img), got)

	// By digest, with the same result.
	res2, err := Pull(ctx, s, reg.host+"/os/feature@"+res.Manifest, testOpts(WithInsecureRegistries(reg.host))...)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Digest != res.Digest {
		t.Errorf("by digest: %s, by tag: %s", res2.Digest, res.Digest)
	}

	// The OCI layout directory and an oci-archive of it give the same image.
	res3, err := Pull(ctx, s, "oci:"+dir+":v1", testOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "image.tar")
	if out, err := exec.Command("tar", "-C", dir, "-cf", archive, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	res4, err := Pull(ctx, s, "oci-archive:"+archive+":v1", testOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	if res3.Digest != res.Digest || res4.Digest != res.Digest {
		t.Errorf("oci: %s, oci-archive: %s, registry: %s", res3.Digest, res4.Digest, res.Digest)
	}
}

// multiArch builds an index of two images that differ in one file.
func multiArch(t testing.TB) (v1.ImageIndex, map[string]v1.Image) {
	imgs := map[string]v1.Image{}
	idx := v1.ImageIndex(empty.Index)
	for _, arch := range []string{"amd64", "arm64"} {
		img := imageOf(t, nil, layerOf(t, tarBytes(t, reg("arch", 0o644, []byte(arch+strings.Repeat(".", 100)))), "gzip"))
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.Architecture, cf.Variant = arch, ""
		img, _ = mutate.ConfigFile(img, cf)
		imgs[arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx, imgs
}

func TestPlatformIndex(t *testing.T) {
	ctx := context.Background()
	reg := startDockerRegistry(t)
	idx, imgs := multiArch(t)
	dir := filepath.Join(t.TempDir(), "oci")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "multi"})); err != nil {
		t.Fatal(err)
	}
	skopeoPush(t, "oci:"+dir+":multi", "docker://"+reg.host+"/os/multi:1", true)
	s := newStore(t)
	for _, tc := range []struct{ platform, want string }{{"", "amd64"}, {"linux/arm64", "arm64"}, {"linux/arm64/v8", "arm64"}} {
		for _, ref := range []string{"docker://" + reg.host + "/os/multi:1", "oci:" + dir + ":multi"} {
			res, err := Pull(ctx, s, ref, testOpts(WithInsecureRegistries(reg.host), WithPlatform(tc.platform))...)
			if err != nil {
				t.Fatalf("%s %q: %v", ref, tc.platform, err)
			}
			want, _ := imgs[tc.want].Digest()
			if res.Manifest != want.String() {
				t.Errorf("%s platform %q: manifest %s, want the %s one %s", ref, tc.platform, res.Manifest, tc.want, want)
			}
		}
	}
	_, err = Pull(ctx, s, "docker://"+reg.host+"/os/multi:1", testOpts(WithInsecureRegistries(reg.host), WithPlatform("linux/s390x"))...)
	if err == nil || !strings.Contains(err.Error(), "no image for this platform") {
		t.Errorf("s390x: %v", err)
	}
}

func TestMirror(t *testing.T) {
	ctx := context.Background()
	primary, mirror := startDockerRegistry(t), startDockerRegistry(t)
	img := imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID=twinroot\n", 10)))), "zstd"))
	dir := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, dir, "v1", img)
	skopeoPush(t, "oci:"+dir+":v1", "docker://"+primary.host+"/os/base:v1", false)
	skopeoPush(t, "oci:"+dir+":v1", "docker://"+mirror.host+"/mirrors/os/base:v1", false)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "%s/os"
insecure = true
[[registry.mirror]]
location = "%s/mirrors/os"
insecure = true
`, primary.host, mirror.host)), 0o644)
	primary.stop()
	s := newStore(t)
	opts := append(testOpts(), WithRegistriesConf(conf))
	res, err := Pull(ctx, s, primary.host+"/os/base:v1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.ConfigName()
	if res.Config != want.String() {
		t.Errorf("config %s, want %s", res.Config, want)
	}
	// The environment variable names the file too.
	env := func(k string) string {
		if k == "CONTAINERS_REGISTRIES_CONF" {
			return conf
		}
		return ""
	}
	if _, err := Pull(ctx, newStore(t), primary.host+"/os/base:v1", append(testOpts(), WithRegistriesConf(""), WithEnv(env))...); err != nil {
		t.Fatalf("via CONTAINERS_REGISTRIES_CONF: %v", err)
	}
	// Without the mirror the stopped primary fails.
	if _, err := Pull(ctx, newStore(t), primary.host+"/os/base:v1", testOpts(WithInsecureRegistries(primary.host))...); err == nil {
		t.Error("pull from a stopped registry succeeded")
	}
}

// countingRegistry wraps the in-process registry and counts blob bytes
// served per digest.
type countingRegistry struct {
	host  string
	bytes map[string]*atomic.Int64
	reqs  atomic.Int64
}

type countWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func newCountingRegistry(t testing.TB, layers ...v1.Layer) *countingRegistry {
	c := &countingRegistry{bytes: map[string]*atomic.Int64{}}
	for _, l := range layers {
		d, _ := l.Digest()
		c.bytes[d.String()] = &atomic.Int64{}
	}
	c.host = memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
				if n, ok := c.bytes[r.URL.Path[i+len("/blobs/"):]]; ok {
					c.reqs.Add(1)
					next.ServeHTTP(countWriter{w, n}, r)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	return c
}

func (c *countingRegistry) reset() {
	for _, n := range c.bytes {
		n.Store(0)
	}
	c.reqs.Store(0)
}

func TestIncremental(t *testing.T) {
	ctx := context.Background()
	base := layerOf(t, tarBytes(t, dir("usr/", 0o755), reg("usr/big", 0o644, randBytes(500000))), "gzip")
	mid := layerOf(t, tarBytes(t, reg("usr/mid", 0o644, randBytes(200000)), reg("usr/gone", 0o644, randBytes(1000))), "zstd")
	app1 := layerOf(t, tarBytes(t, reg("etc/version", 0o644, []byte("1")), reg("usr/app1", 0o644, randBytes(2000))), "gzip")
	app2 := layerOf(t, tarBytes(t, reg("etc/version", 0o644, []byte("2")), reg("usr/new", 0o644, randBytes(100000))), "gzip")
	v1img, v2img := imageOf(t, nil, base, mid, app1), imageOf(t, nil, base, mid, app2)
	c := newCountingRegistry(t, base, mid, app1, app2)
	push(t, c.host, "os/inc:v1", v1img)
	push(t, c.host, "os/inc:v2", v2img)
	c.reset()
	s := newStore(t)
	opts := testOpts(WithInsecureRegistries(c.host))
	r1, err := Pull(ctx, s, c.host+"/os/inc:v1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	if r1.LayersCached != 0 || c.reqs.Load() != 3 {
		t.Errorf("v1: %+v, %d blob requests", r1, c.reqs.Load())
	}
	c.reset()
	r2, err := Pull(ctx, s, c.host+"/os/inc:v2", opts...)
	if err != nil {
		t.Fatal(err)
	}
	app2d, _ := app2.Digest()
	app2size, _ := app2.Size()
	for d, n := range c.bytes {
		want := int64(0)
		if d == app2d.String() {
			want = app2size
		}
		if n.Load() != want {
			t.Errorf("v2 pull: blob %s: %d bytes served, want %d", d, n.Load(), want)
		}
	}
	if r2.LayersCached != 2 || r2.BytesFetched != app2size {
		t.Errorf("v2: %+v", r2)
	}

	// An image whose top layer deletes usr/gone, pulled into a fresh
	// store first: the object of usr/gone is in no committed image, but
	// the checkpoint put it in objects/, so v1 afterwards fetches nothing
	// but its own top layer.
	app0 := layerOf(t, tarBytes(t, whiteout("usr/.wh.gone")), "gzip")
	c2 := newCountingRegistry(t, base, mid, app0, app1)
	push(t, c2.host, "os/inc:v0", imageOf(t, nil, base, mid, app0))
	push(t, c2.host, "os/inc:v1", v1img)
	s2 := newStore(t)
	opts2 := testOpts(WithInsecureRegistries(c2.host))
	if _, err := Pull(ctx, s2, c2.host+"/os/inc:v0", opts2...); err != nil {
		t.Fatal(err)
	}
	c2.reset()
	r3, err := Pull(ctx, s2, c2.host+"/os/inc:v1", opts2...)
	if err != nil {
		t.Fatal(err)
	}
	app1size, _ := app1.Size()
	if r3.LayersCached != 2 || r3.BytesFetched != app1size {
		t.Errorf("v1 after v0: %+v (want only app1's %d bytes)", r3, app1size)
	}
	diffTrees(t, expectedTree(t, v1img), scanDir(t, mountImage(t, s2, r3.Digest)))
	got := scanDir(t, mountImage(t, s, r2.Digest))
	diffTrees(t, expectedTree(t, v2img), got)
	t.Logf("v1 %+v\nv2 %+v", r1, r2)
}

func TestBasicAuth(t *testing.T) {
	ctx := context.Background()
	host := memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if r.Method == http.MethodGet && !(ok && u == "alice" && p == "s3cret") {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	push(t, host, "os/auth:1", imageOf(t, nil, layerOf(t, tarBytes(t, reg("a", 0o644, []byte("a"))), "gzip")))
	authFile := filepath.Join(t.TempDir(), "auth.json")
	cred := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	os.WriteFile(authFile, []byte(fmt.Sprintf(`{"auths":{"%s/os":{"auth":"%s"}}}`, host, cred)), 0o600)
	s := newStore(t)
	if _, err := Pull(ctx, s, host+"/os/auth:1", testOpts(WithInsecureRegistries(host))...); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	env := func(k string) string {
		if k == "REGISTRY_AUTH_FILE" {
			return authFile
		}
		return ""
	}
	if _, err := Pull(ctx, s, host+"/os/auth:1", append(testOpts(WithInsecureRegistries(host)), WithEnv(env))...); err != nil {
		t.Fatalf("with REGISTRY_AUTH_FILE: %v", err)
	}
}

// TestResume: a pull that fails at its second layer leaves a record of
// the first; the next pull does not download the first layer again when
// the store kept its objects (objstore's optional Checkpoint), and
// otherwise fetches it again for its content only.
func TestResume(t *testing.T) {
	ctx := context.Background()
	l1 := layerOf(t, tarBytes(t, reg("usr/one", 0o644, randBytes(300000)), reg("usr/small", 0o644, []byte("s"))), "gzip")
	l2 := layerOf(t, tarBytes(t, reg("usr/two", 0o644, randBytes(100000))), "zstd")
	img := imageOf(t, nil, l1, l2)
	d2, _ := l2.Digest()
	var broken atomic.Bool
	c := &countingRegistry{bytes: map[string]*atomic.Int64{}}
	for _, l := range []v1.Layer{l1, l2} {
		d, _ := l.Digest()
		c.bytes[d.String()] = &atomic.Int64{}
	}
	c.host = memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet {
				d := r.URL.Path[i+len("/blobs/"):]
				if broken.Load() && d == d2.String() {
					http.Error(w, "down", http.StatusServiceUnavailable)
					return
				}
				if n, ok := c.bytes[d]; ok {
					next.ServeHTTP(countWriter{w, n}, r)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	push(t, c.host, "os/r:1", img)
	c.reset()
	s := newStore(t)
	opts := testOpts(WithInsecureRegistries(c.host))
	broken.Store(true)
	if _, err := Pull(ctx, s, c.host+"/os/r:1", opts...); err == nil {
		t.Fatal("pull with a broken layer succeeded")
	}
	checkUnchanged(t, s)
	broken.Store(false)
	c.reset()
	res, err := Pull(ctx, s, c.host+"/os/r:1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := l1.Digest()
	st, err := s.NewStaging(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, checkpoints := any(st).(checkpointer)
	st.Abort()
	got1 := c.bytes[d1.String()].Load()
	if checkpoints && (got1 != 0 || res.LayersCached != 1) {
		t.Errorf("with checkpoints, layer 1 was fetched again (%d bytes): %+v", got1, res)
	}
	if !checkpoints {
		size1, _ := l1.Size()
		if got1 != size1 || res.LayersCached != 0 {
			t.Errorf("without checkpoints: layer 1 fetched %d bytes (want %d, its objects were dropped with the staging): %+v", got1, size1, res)
		}
		t.Logf("objstore has no Staging.Checkpoint: layer 1's objects did not survive the failed pull; refetched once for content")
	}
	diffTrees(t, expectedTree(t, img), scanDir(t, mountImage(t, s, res.Digest)))
}

// Layer records that name objects gc has deleted since: the next pull
// links what is still there (in batches, over 512 objects here) and
// fetches the layers whose objects are gone again, for their content,
// ending in the same image.
func TestPullAfterGC(t *testing.T) {
	ctx := context.Background()
	var many []tf
	many = append(many, dir("usr/", 0o755), dir("usr/share/", 0o755))
	for i := range 1200 {
		many = append(many, reg(fmt.Sprintf("usr/share/f%04d", i), 0o644, randBytes(100+i)))
	}
	base := layerOf(t, tarBytes(t, many...), "gzip")
	app1 := layerOf(t, tarBytes(t, reg("etc/version", 0o644, randBytes(3000))), "gzip")
	app2 := layerOf(t, tarBytes(t, reg("etc/version", 0o644, randBytes(4000))), "gzip")
	v1img, v2img := imageOf(t, nil, base, app1), imageOf(t, nil, base, app2)
	c := newCountingRegistry(t, base, app1, app2)
	push(t, c.host, "os/gc:v1", v1img)
	push(t, c.host, "os/gc:v2", v2img)
	s := newStore(t)
	opts := testOpts(WithInsecureRegistries(c.host))
	r1, err := Pull(ctx, s, c.host+"/os/gc:v1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	// v2 while v1 is there: base replays from its record, every one of its
	// 1200 objects linked.
	c.reset()
	r2, err := Pull(ctx, s, c.host+"/os/gc:v2", opts...)
	if err != nil {
		t.Fatal(err)
	}
	app2size, _ := app2.Size()
	if r2.LayersCached != 1 || r2.BytesFetched != app2size || r2.ObjectsReused < 1200 {
		t.Errorf("v2 with v1 present: %+v", r2)
	}
	// Both removed and collected: base's record names 1200 objects that are
	// gone, so base is fetched again.
	for _, d := range []verity.Digest{r1.Digest, r2.Digest} {
		if err := s.Remove(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GC(ctx, objstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	c.reset()
	r3, err := Pull(ctx, s, c.host+"/os/gc:v1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	baseSize, _ := base.Size()
	if r3.Digest != r1.Digest || r3.BytesFetched < baseSize || r3.ObjectsReused != 0 {
		t.Errorf("v1 after gc: %+v (first %+v)", r3, r1)
	}
	diffTrees(t, expectedTree(t, v1img), scanDir(t, mountImage(t, s, r3.Digest)))
	if res, err := s.Fsck(ctx, objstore.FsckOptions{}); err != nil || !res.Clean() {
		t.Errorf("fsck: %v, %+v", err, res.Problems)
	}
}
