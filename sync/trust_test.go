//go:build containers_image_openpgp

package sync

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/signature/signer"
	"go.podman.io/image/v5/signature/sigstore"
	"go.podman.io/image/v5/types"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/trust"
)

// gpgKey is a throwaway GnuPG home with one signing key.
type gpgKey struct {
	home, fpr, pub string
}

// newGPGKey makes a key with gpg --batch in a temp GNUPGHOME and exports
// its public key; the agent gpg starts is killed at cleanup.
func newGPGKey(t *testing.T, name string) gpgKey {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg not installed (Debian package gnupg)")
	}
	home, err := os.MkdirTemp("", "tw-gpg-") // short: the agent's socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	k := gpgKey{home: home}
	gpg := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command("gpg", append([]string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("gpg %v: %v\n%s", args, err, out)
		}
		return out
	}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		cmd.Run()
		os.RemoveAll(home)
	})
	gpg("--quick-gen-key", name+" <"+name+"@twinroot.test>", "ed25519", "sign", "never")
	for _, l := range strings.Split(string(gpg("--list-keys", "--with-colons")), "\n") {
		if f := strings.Split(l, ":"); f[0] == "fpr" && k.fpr == "" {
			k.fpr = f[9]
		}
	}
	k.pub = filepath.Join(t.TempDir(), name+".gpg")
	if err := os.WriteFile(k.pub, gpg("--export", k.fpr), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
}

// sigstoreKey is a sigstore key pair made by the function skopeo's
// generate-sigstore-key calls (Debian's skopeo 1.9 cannot generate keys).
type sigstoreKey struct {
	priv, pub, pass string
}

func newSigstoreKey(t *testing.T, name string) sigstoreKey {
	t.Helper()
	kp, err := sigstore.GenerateKeyPair([]byte("test-passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	k := sigstoreKey{priv: filepath.Join(dir, name+".key"), pub: filepath.Join(dir, name+".pub"), pass: filepath.Join(dir, name+".pass")}
	for f, b := range map[string][]byte{k.priv: kp.PrivateKey, k.pub: kp.PublicKey, k.pass: []byte("test-passphrase")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// signedRegistry is a docker-registry with a lookaside directory and
// sigstore attachments configured in a registries.d, and a registries.conf
// marking it insecure (plain HTTP on loopback).
type signedRegistry struct {
	*dockerRegistry
	regD, lookaside, regConf string
}

func newSignedRegistry(t *testing.T) *signedRegistry {
	t.Helper()
	r := &signedRegistry{dockerRegistry: startDockerRegistry(t)}
	dir := t.TempDir()
	r.lookaside = filepath.Join(dir, "lookaside")
	r.regD = filepath.Join(dir, "registries.d")
	os.MkdirAll(r.regD, 0o755)
	// The whole registry: lookaside signatures; one repository: sigstore
	// attachments (registries.d's most specific entry wins).
	os.WriteFile(filepath.Join(r.regD, "test.yaml"), []byte(fmt.Sprintf(`docker:
  %[1]s:
    lookaside: file://%[2]s
    lookaside-staging: file://%[2]s
  %[1]s/os/sigstore:
    use-sigstore-attachments: true
  %[1]s/os/sigstore-other-key:
    use-sigstore-attachments: true
`, r.host, r.lookaside)), 0o644)
	r.regConf = filepath.Join(dir, "registries.conf")
	os.WriteFile(r.regConf, []byte(fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", r.host)), 0o644)
	return r
}

// copyImage runs skopeo copy with the registry's registries.d and any
// signing arguments.
func (r *signedRegistry) copyImage(t *testing.T, gnupgHome string, args ...string) {
	t.Helper()
	all := append([]string{"--insecure-policy", "--registries.d", r.regD, "copy", "-q", "--dest-tls-verify=false", "--src-tls-verify=false"}, args...)
	cmd := exec.Command("skopeo", all...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+gnupgHome, "CONTAINERS_REGISTRIES_CONF="+r.regConf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %v: %v\n%s", all, err, out)
	}
}

// sigstoreCopy copies an OCI layout image into the registry with a
// sigstore signature as a sigstore attachment. Debian's skopeo 1.9 is
// built with sigstore signing disabled ("Debian-local change: sigstore
// disabled"), so this runs the code upstream skopeo runs for
// --sign-by-sigstore-private-key: go.podman.io/image's sigstore.NewSigner
// and copy.Image.
func (r *signedRegistry) sigstoreCopy(t *testing.T, k sigstoreKey, src, dst string, extra ...sigstore.Option) {
	t.Helper()
	pass, _ := os.ReadFile(k.pass)
	r.sigstoreKeyless(t, src, dst, append([]sigstore.Option{sigstore.WithPrivateKeyFile(k.priv, pass)}, extra...)...)
}

// sigstoreKeyless is sigstoreCopy with the signer's options as given (a
// Fulcio certificate instead of a key file).
func (r *signedRegistry) sigstoreKeyless(t *testing.T, src, dst string, opts ...sigstore.Option) {
	t.Helper()
	ctx := context.Background()
	sg, err := sigstore.NewSigner(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer sg.Close()
	srcRef, err := layout.ParseReference(src)
	if err != nil {
		t.Fatal(err)
	}
	dstRef, err := docker.ParseReference("//" + dst)
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := signature.NewPolicyFromBytes([]byte(`{"default":[{"type":"insecureAcceptAnything"}]}`))
	pc, _ := signature.NewPolicyContext(pol)
	defer pc.Destroy()
	sys := &types.SystemContext{RegistriesDirPath: r.regD, SystemRegistriesConfPath: r.regConf, DockerInsecureSkipTLSVerify: types.OptionalBoolTrue}
	if _, err := copy.Image(ctx, pc, dstRef, srcRef, &copy.Options{Signers: []*signer.Signer{sg}, DestinationCtx: sys, SourceCtx: sys}); err != nil {
		t.Fatalf("sign %s into %s: %v", src, dst, err)
	}
}

// storeState is what a refused pull must leave unchanged.
func storeState(t *testing.T, s *objstore.Store) string {
	t.Helper()
	ctx := context.Background()
	imgs, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fr, err := s.Fsck(ctx, objstore.FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Problems) > 0 {
		t.Errorf("fsck: %+v", fr.Problems)
	}
	var names []string
	for _, i := range imgs {
		names = append(names, i.Digest.Hex())
	}
	// Every path under the store, so that a write anywhere (layer records,
	// state, tmp/) before the policy decides shows, not only new images.
	var files []string
	err = filepath.WalkDir(s.Root(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.Root(), p)
		if d.IsDir() {
			files = append(files, rel+"/")
		} else {
			files = append(files, fmt.Sprintf("%s:%d", rel, fi.Size()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("images %v objects %d files %v", names, fr.Objects, files)
}

func writePolicy(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSignedPull signs images with skopeo (GPG into a lookaside store,
// sigstore into attachments), and pulls them under a policy.json that
// requires those signatures: verified pulls pass and record the entry;
// unsigned, wrongly signed and re-tagged images, and images the policy
// rejects outright, are refused naming the policy entry, with the store
// unchanged.
func TestSignedPull(t *testing.T) {
	ctx := context.Background()
	r := newSignedRegistry(t)
	good, other := newGPGKey(t, "good"), newGPGKey(t, "other")
	sk, skOther := newSigstoreKey(t, "cosign"), newSigstoreKey(t, "cosign-other")

	// One image per case: lookaside signatures are per repository and
	// digest, and every copy rewrites that digest's set.
	lay := filepath.Join(t.TempDir(), "oci")
	for _, n := range []string{"a", "b", "unsigned", "wrong"} {
		writeLayout(t, lay, n, imageOf(t, map[string]string{trust.LabelVersion: "1.0"},
			layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID="+n+"\n", 20)))), "gzip")))
	}
	h := r.host
	r.copyImage(t, good.home, "--sign-by", good.fpr, "oci:"+lay+":a", "docker://"+h+"/os/gpg:v1")
	r.copyImage(t, good.home, "oci:"+lay+":unsigned", "docker://"+h+"/os/gpg:unsigned")
	r.copyImage(t, other.home, "--sign-by", other.fpr, "oci:"+lay+":wrong", "docker://"+h+"/os/gpg:wrong-key")
	// Debian's skopeo refuses --sign-by-sigstore-private-key (see
	// sigstoreCopy); check that it still does, so the test notices a
	// skopeo that can sign.
	if out, err := exec.Command("skopeo", "--insecure-policy", "--registries.d", r.regD, "copy", "-q", "--dest-tls-verify=false",
		"--sign-by-sigstore-private-key", sk.priv, "--sign-passphrase-file", sk.pass, "oci:"+lay+":a", "docker://"+h+"/os/sigstore:v1").CombinedOutput(); err == nil {
		t.Log("this skopeo signs with sigstore keys; sigstoreCopy could use it")
	} else {
		t.Logf("skopeo --sign-by-sigstore-private-key: %v: %s", err, strings.TrimSpace(string(out)))
	}
	r.sigstoreCopy(t, sk, lay+":a", h+"/os/sigstore:v1")
	r.sigstoreCopy(t, sk, lay+":a", h+"/os/sigstore-other-key:v1")
	r.copyImage(t, good.home, "oci:"+lay+":a", "docker://"+h+"/os/open:v1")
	r.copyImage(t, good.home, "oci:"+lay+":a", "docker://"+h+"/elsewhere/x:v1")
	policy := writePolicy(t, fmt.Sprintf(`{
  "default": [{"type": "reject"}],
  "transports": {
    "docker": {
      "%[1]s/os/gpg": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": %[2]q}],
      "%[1]s/os/sigstore": [{"type": "sigstoreSigned", "keyPath": %[3]q, "signedIdentity": {"type": "matchRepository"}}],
      "%[1]s/os/sigstore-other-key": [{"type": "sigstoreSigned", "keyPath": %[4]q}],
      "%[1]s/os/open": [{"type": "insecureAcceptAnything"}]
    }
  }
}`, h, good.pub, sk.pub, skOther.pub))
	opts := func(extra ...Option) []Option {
		return append(testOpts(WithRegistriesConf(r.regConf), WithPolicy(policy), WithRegistriesD(r.regD)), extra...)
	}

	s := newStore(t)
	var res Result
	var err error
	aDigest := ""
	for _, tc := range []struct {
		ref, entry, reqs string
	}{
		{h + "/os/gpg:v1", fmt.Sprintf(`transports.docker.%q`, h+"/os/gpg"), "signedBy"},
		{"docker://" + h + "/os/sigstore:v1", fmt.Sprintf(`transports.docker.%q`, h+"/os/sigstore"), "sigstoreSigned"},
	} {
		res, err = Pull(ctx, s, tc.ref, opts()...)
		if err != nil {
			t.Fatalf("%s: %v", tc.ref, err)
		}
		if !res.Trust.Verified || res.Trust.Entry() != tc.entry || strings.Join(res.Trust.Requirements, ",") != tc.reqs || res.Trust.Digest != res.TopManifest {
			t.Errorf("%s: verdict %+v", tc.ref, res.Trust)
		}
		info, err := s.Image(ctx, res.Digest)
		if err != nil {
			t.Fatal(err)
		}
		p, err := ProvenanceOf(info.Meta)
		if err != nil || p.Trust == nil || !p.Trust.Verified || p.Trust.Entry() != tc.entry || p.Version.Label != "1.0" {
			t.Errorf("%s: recorded provenance %+v %v", tc.ref, p, err)
		}
		t.Logf("%s: %s", tc.ref, res.Trust)
		if aDigest == "" {
			aDigest = res.TopManifest
		}
	}
	// Accepted unverified: recorded as such.
	res, err = Pull(ctx, s, h+"/os/open:v1", opts()...)
	if err != nil || res.Trust.Verified || res.Trust.Entry() != fmt.Sprintf(`transports.docker.%q`, h+"/os/open") {
		t.Errorf("open: %+v %v", res.Trust, err)
	}
	// Re-tagged: v1 is re-pointed to B, and the valid signature of A (a
	// real signature by the trusted key, for this repository and tag) is
	// put where B's signature would be.
	aSig, err := os.ReadFile(filepath.Join(r.lookaside, "os", "gpg@"+strings.Replace(aDigest, ":", "=", 1), "signature-1"))
	if err != nil {
		t.Fatal(err)
	}
	r.copyImage(t, good.home, "oci:"+lay+":b", "docker://"+h+"/os/gpg:v1")
	bDigest := ""
	{
		s2 := newStore(t)
		pol := writePolicy(t, `{"default": [{"type": "insecureAcceptAnything"}]}`)
		res, err := Pull(ctx, s2, h+"/os/gpg:v1", testOpts(WithRegistriesConf(r.regConf), WithPolicy(pol), WithRegistriesD(r.regD))...)
		if err != nil {
			t.Fatal(err)
		}
		bDigest = res.TopManifest
	}
	bSigDir := filepath.Join(r.lookaside, "os", "gpg@"+strings.Replace(bDigest, ":", "=", 1))
	os.MkdirAll(bSigDir, 0o755)
	if err := os.WriteFile(filepath.Join(bSigDir, "signature-1"), aSig, 0o644); err != nil {
		t.Fatal(err)
	}

	before := storeState(t, s)
	for _, tc := range []struct {
		ref, entry, why string
		want            error
		enforce         bool
	}{
		{h + "/os/gpg:unsigned", `transports.docker."` + h + `/os/gpg"`, "signature", trust.ErrRejected, false},
		{h + "/os/gpg:wrong-key", `transports.docker."` + h + `/os/gpg"`, "", trust.ErrRejected, false},
		{h + "/os/gpg:v1", `transports.docker."` + h + `/os/gpg"`, "does not match", trust.ErrRejected, false},
		{h + "/os/sigstore-other-key:v1", `transports.docker."` + h + `/os/sigstore-other-key"`, "", trust.ErrRejected, false},
		{h + "/elsewhere/x:v1", "default", "reject", trust.ErrRejected, false},
		{h + "/os/open:v1", `transports.docker."` + h + `/os/open"`, "insecureAcceptAnything", trust.ErrNotVerified, true},
	} {
		_, err := Pull(ctx, s, tc.ref, opts(WithEnforceSignaturePolicy(tc.enforce))...)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.entry) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v\nwant %v naming %s", tc.ref, err, tc.want, tc.entry)
			continue
		}
		if after := storeState(t, s); after != before {
			t.Errorf("%s: refused, but the store changed: %s -> %s", tc.ref, before, after)
		}
		t.Logf("%s: %v", tc.ref, err)
	}
	// What one policy evaluation costs (logged, not asserted): c/image's
	// docker source opened for the tag, the manifest by digest, the
	// signature, the verification.
	for _, ref := range []string{"/os/sigstore:v1", "/os/open:v1"} {
		img := trust.Image{Transport: trust.TransportDocker, Reference: h + ref, Digest: aDigest}
		o := defaultOptions()
		o.regConf = r.regConf
		var ds []time.Duration
		for range 15 {
			start := time.Now()
			if _, err := trust.Check(ctx, img, trust.Options{PolicyPath: policy, RegistriesDir: r.regD, System: o.systemContext()}); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		t.Logf("trust.Check %s: median %v of %d", ref, ds[len(ds)/2], len(ds))
	}
	// Enforcement does not stop verified images.
	if _, err := Pull(ctx, s, h+"/os/sigstore:v1", opts(WithEnforceSignaturePolicy(true))...); err != nil {
		t.Errorf("enforced verified pull: %v", err)
	}
}

// TestLocalLayoutPolicy: oci: and oci-archive: sources go through the same
// policy, scoped by path. c/image keeps no signatures in layouts, so a
// signature requirement refuses them, as in podman.
func TestLocalLayoutPolicy(t *testing.T) {
	ctx := context.Background()
	img := imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID=l\n", 20)))), "zstd"))
	base := t.TempDir()
	open, signed := filepath.Join(base, "open"), filepath.Join(base, "signed")
	writeLayout(t, open, "v1", img)
	writeLayout(t, signed, "v1", img)
	archive := filepath.Join(base, "img.tar")
	if out, err := exec.Command("tar", "-C", open, "-cf", archive, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	key := newGPGKey(t, "layout")
	policy := writePolicy(t, fmt.Sprintf(`{
  "default": [{"type": "reject"}],
  "transports": {
    "oci": {
      %[1]q: [{"type": "insecureAcceptAnything"}],
      %[2]q: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": %[3]q}]
    },
    "oci-archive": {
      "": [{"type": "reject"}]
    }
  }
}`, open, signed, key.pub))
	s := newStore(t)
	res, err := Pull(ctx, s, "oci:"+open+":v1", testOpts(WithPolicy(policy))...)
	if err != nil || res.Trust.Entry() != fmt.Sprintf("transports.oci.%q", open) {
		t.Fatalf("oci open: %+v %v", res.Trust, err)
	}
	before := storeState(t, s)
	for _, tc := range []struct{ ref, entry string }{
		{"oci:" + signed + ":v1", fmt.Sprintf("transports.oci.%q", signed)},
		{"oci-archive:" + archive + ":v1", `transports.oci-archive.""`},
	} {
		_, err := Pull(ctx, s, tc.ref, testOpts(WithPolicy(policy))...)
		if !errors.Is(err, trust.ErrRejected) || !strings.Contains(err.Error(), tc.entry) {
			t.Errorf("%s: %v, want a refusal naming %s", tc.ref, err, tc.entry)
		}
		t.Logf("%s: %v", tc.ref, err)
	}
	if after := storeState(t, s); after != before {
		t.Errorf("refusals changed the store: %s -> %s", before, after)
	}
	// skopeo cannot put a signature into a layout either.
	cmd := exec.Command("skopeo", "--insecure-policy", "copy", "-q", "--sign-by", key.fpr, "oci:"+open+":v1", "oci:"+filepath.Join(base, "copy")+":v1")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+key.home)
	out, err := cmd.CombinedOutput()
	t.Logf("skopeo copy --sign-by into oci: %v %s", err, strings.TrimSpace(string(out)))
}

// TestSignedPullAuthFile: the policy engine reads the manifest from a
// registry that needs credentials which only --authfile holds; sync hands
// them over, so the verified pull passes, and without them it fails.
func TestSignedPullAuthFile(t *testing.T) {
	ctx := context.Background()
	host := memRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !(ok && u == "alice" && p == "s3cret") {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	dir := t.TempDir()
	r := &signedRegistry{dockerRegistry: &dockerRegistry{host: host}, lookaside: filepath.Join(dir, "lookaside"), regD: filepath.Join(dir, "registries.d"), regConf: filepath.Join(dir, "registries.conf")}
	os.MkdirAll(r.regD, 0o755)
	os.WriteFile(filepath.Join(r.regD, "test.yaml"), []byte(fmt.Sprintf("docker:\n  %s:\n    lookaside: file://%s\n    lookaside-staging: file://%s\n", host, r.lookaside, r.lookaside)), 0o644)
	os.WriteFile(r.regConf, []byte(fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", host)), 0o644)
	key := newGPGKey(t, "auth")
	lay := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, lay, "v1", imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID=auth\n", 20)))), "gzip")))
	r.copyImage(t, key.home, "--dest-creds", "alice:s3cret", "--sign-by", key.fpr, "oci:"+lay+":v1", "docker://"+host+"/os/auth:v1")
	authFile := filepath.Join(dir, "auth.json")
	os.WriteFile(authFile, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte("alice:s3cret")))), 0o600)
	policy := writePolicy(t, fmt.Sprintf(`{"default": [{"type": "reject"}], "transports": {"docker": {%q: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": %q}]}}}`, host, key.pub))
	empty := filepath.Join(dir, "empty.json")
	os.WriteFile(empty, []byte(`{"auths":{}}`), 0o600)
	env := func(k string) string {
		if k == "REGISTRY_AUTH_FILE" {
			return empty
		}
		return ""
	}
	opts := append(testOpts(WithRegistriesConf(r.regConf), WithPolicy(policy), WithRegistriesD(r.regD)), WithEnv(env))
	res, err := Pull(ctx, newStore(t), host+"/os/auth:v1", append(opts, WithAuthFiles(authFile))...)
	if err != nil || !res.Trust.Verified {
		t.Fatalf("verified pull with --authfile: %+v %v", res.Trust, err)
	}
	if _, err := Pull(ctx, newStore(t), host+"/os/auth:v1", opts...); err == nil {
		t.Error("pull without credentials succeeded")
	}
}
