//go:build containers_image_openpgp

package sync

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.podman.io/image/v5/signature/sigstore/fulcio"
	"go.podman.io/image/v5/signature/sigstore/rekor"

	"github.com/twinroot/twinroot/trust"
)

// fakeRekor is a transparency log on 127.0.0.1 that answers Rekor's
// createLogEntry (POST /api/v1/log/entries) the way Rekor does: the entry
// body as sent, an integrated time, a log index and ID, and a signed entry
// timestamp (SET: ECDSA over the canonical JSON of body, integratedTime,
// logID and logIndex) by its own key. Verification needs only its public
// key: this is the offline half of sigstore's Rekor support.
type fakeRekor struct {
	url    *url.URL
	pubPEM string // file
	key    *ecdsa.PrivateKey
}

func newFakeRekor(t *testing.T) *fakeRekor {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	f := &fakeRekor{key: key, pubPEM: filepath.Join(t.TempDir(), "rekor.pub")}
	os.WriteFile(f.pubPEM, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	logID := sha256.Sum256(der)
	index := int64(0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/log/entries" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		index++
		payload := map[string]any{"body": base64.StdEncoding.EncodeToString(body), "integratedTime": time.Now().Unix(),
			"logID": hex.EncodeToString(logID[:]), "logIndex": index}
		canonical, _ := json.Marshal(payload) // sorted keys, no spaces, integers, base64/hex strings: RFC 8785 form
		h := sha256.Sum256(canonical)
		set, err := ecdsa.SignASN1(rand.Reader, key, h[:])
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		entry := map[string]any{}
		for k, v := range payload {
			entry[k] = v
		}
		entry["verification"] = map[string]any{"signedEntryTimestamp": set}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{fmt.Sprintf("%064x", index): entry})
	}))
	t.Cleanup(srv.Close)
	f.url, _ = url.Parse(srv.URL)
	return f
}

// TestSigstoreRekorSET: a sigstore signature with a Rekor SET (the signer
// uploads to a Rekor on loopback, as skopeo --sign-by-sigstore with
// rekorURL does) is verified offline against the log's public key by a
// sigstoreSigned entry with keyPath and rekorPublicKeyPath; the same
// signature is refused when the policy trusts another log, or requires a
// SET that a signature without one lacks.
func TestSigstoreRekorSET(t *testing.T) {
	ctx := context.Background()
	r := newSignedRegistry(t)
	log, otherLog := newFakeRekor(t), newFakeRekor(t)
	sk := newSigstoreKey(t, "rekor-signer")
	lay := filepath.Join(t.TempDir(), "oci")
	for _, n := range []string{"logged", "unlogged"} {
		writeLayout(t, lay, n, imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID="+n+"\n", 20)))), "gzip")))
	}
	h := r.host
	r.sigstoreCopy(t, sk, lay+":logged", h+"/os/sigstore:logged", rekor.WithRekor(log.url))
	r.sigstoreCopy(t, sk, lay+":unlogged", h+"/os/sigstore:unlogged")
	policy := func(rekorPub string) string {
		return writePolicy(t, fmt.Sprintf(`{"default": [{"type": "reject"}], "transports": {"docker": {%q: [
			{"type": "sigstoreSigned", "keyPath": %q, "rekorPublicKeyPath": %q, "signedIdentity": {"type": "matchRepository"}}]}}}`,
			h+"/os/sigstore", sk.pub, rekorPub))
	}
	opts := func(pol string) []Option {
		return testOpts(WithRegistriesConf(r.regConf), WithPolicy(pol), WithRegistriesD(r.regD))
	}
	s := newStore(t)
	res, err := Pull(ctx, s, h+"/os/sigstore:logged", opts(policy(log.pubPEM))...)
	if err != nil || !res.Trust.Verified {
		t.Fatalf("signature with a Rekor SET: %+v %v", res.Trust, err)
	}
	before := storeState(t, s)
	for _, tc := range []struct{ ref, pol, why string }{
		{"/os/sigstore:logged", policy(otherLog.pubPEM), "Rekor SET"},
		{"/os/sigstore:unlogged", policy(log.pubPEM), "missing"},
	} {
		_, err := Pull(ctx, s, h+tc.ref, opts(tc.pol)...)
		if !errors.Is(err, trust.ErrRejected) || !strings.Contains(err.Error(), `transports.docker."`+h+`/os/sigstore"`) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v", tc.ref, err)
		}
		t.Logf("%s: %v", tc.ref, err)
	}
	if after := storeState(t, s); after != before {
		t.Errorf("refusals changed the store: %s -> %s", before, after)
	}
}

// fakeFulcio is a certificate authority on 127.0.0.1 answering Fulcio's
// signingCert (POST /api/v1/signingCert): a short-lived code-signing
// certificate for the posted key, with the OIDC token's email as its SAN
// and issuer in Fulcio's issuer extension (v2), chained to its own root.
// (It trusts the token, as a test needs; real Fulcio verifies it.)
type fakeFulcio struct {
	url    *url.URL
	caPath string
}

func newFakeFulcio(t *testing.T, issuer string) *fakeFulcio {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "twinroot test fulcio"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	f := &fakeFulcio{caPath: filepath.Join(t.TempDir(), "fulcio.pem")}
	os.WriteFile(f.caPath, caPEM, 0o644)
	issuerExt, _ := asn1.Marshal(issuer)
	serial := int64(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/signingCert" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		var req struct {
			PublicKey struct {
				Content []byte `json:"content"`
			} `json:"publicKey"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		pub, err := x509.ParsePKIXPublicKey(req.PublicKey.Content)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		parts := strings.Split(tok, ".")
		var claims struct {
			Email string `json:"email"`
		}
		if len(parts) == 3 {
			b, _ := base64.RawURLEncoding.DecodeString(parts[1])
			json.Unmarshal(b, &claims)
		}
		serial++
		leaf := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(10 * time.Minute),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, EmailAddresses: []string{claims.Email},
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}, Value: issuerExt}}}
		der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, pub, caKey)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/pem-certificate-chain")
		w.WriteHeader(http.StatusCreated)
		w.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		w.Write(caPEM)
	}))
	t.Cleanup(srv.Close)
	f.url, _ = url.Parse(srv.URL)
	return f
}

// oidcToken is an ES256 JWT with an email claim, as an identity provider
// would issue for the signer.
func oidcToken(t *testing.T, issuer, email string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	enc := base64.RawURLEncoding.EncodeToString
	head := enc([]byte(`{"alg":"ES256","typ":"JWT"}`))
	body, _ := json.Marshal(map[string]any{"iss": issuer, "sub": email, "email": email, "email_verified": true, "aud": "sigstore",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()})
	h := sha256.Sum256([]byte(head + "." + enc(body)))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return head + "." + enc(body) + "." + enc(sig)
}

// TestSigstoreFulcioRekor: keyless signing (a Fulcio certificate for the
// signer's OIDC identity, the signature logged in Rekor), verified offline
// by a sigstoreSigned entry with fulcio (CA, issuer, email) and
// rekorPublicKeyPath; another email, another issuer or another CA is
// refused.
func TestSigstoreFulcioRekor(t *testing.T) {
	ctx := context.Background()
	const issuer, email = "https://issuer.twinroot.test", "builder@twinroot.test"
	r := newSignedRegistry(t)
	log := newFakeRekor(t)
	ca, otherCA := newFakeFulcio(t, issuer), newFakeFulcio(t, issuer)
	lay := filepath.Join(t.TempDir(), "oci")
	writeLayout(t, lay, "v1", imageOf(t, nil, layerOf(t, tarBytes(t, reg("etc/os-release", 0o644, []byte(strings.Repeat("ID=keyless\n", 20)))), "gzip")))
	h := r.host
	r.sigstoreKeyless(t, lay+":v1", h+"/os/sigstore:keyless", fulcio.WithFulcioAndPreexistingOIDCIDToken(ca.url, oidcToken(t, issuer, email)), rekor.WithRekor(log.url))
	policy := func(caPath, iss, mail string) string {
		return writePolicy(t, fmt.Sprintf(`{"default": [{"type": "reject"}], "transports": {"docker": {%q: [
			{"type": "sigstoreSigned", "fulcio": {"caPath": %q, "oidcIssuer": %q, "subjectEmail": %q}, "rekorPublicKeyPath": %q,
			 "signedIdentity": {"type": "matchRepository"}}]}}}`, h+"/os/sigstore", caPath, iss, mail, log.pubPEM))
	}
	opts := func(pol string) []Option {
		return testOpts(WithRegistriesConf(r.regConf), WithPolicy(pol), WithRegistriesD(r.regD))
	}
	s := newStore(t)
	res, err := Pull(ctx, s, h+"/os/sigstore:keyless", opts(policy(ca.caPath, issuer, email))...)
	if err != nil || !res.Trust.Verified {
		t.Fatalf("keyless signature: %+v %v", res.Trust, err)
	}
	t.Logf("keyless: %s", res.Trust)
	before := storeState(t, s)
	for _, tc := range []struct{ pol, why string }{
		{policy(ca.caPath, issuer, "someone@else.test"), "Required email"},
		{policy(ca.caPath, "https://other.issuer.test", email), "OIDC issuer"},
		{policy(otherCA.caPath, issuer, email), "certificate"},
	} {
		_, err := Pull(ctx, s, h+"/os/sigstore:keyless", opts(tc.pol)...)
		if !errors.Is(err, trust.ErrRejected) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("want a refusal for %q: %v", tc.why, err)
		}
		t.Logf("%s: %v", tc.why, err)
	}
	if after := storeState(t, s); after != before {
		t.Errorf("refusals changed the store: %s -> %s", before, after)
	}
}
