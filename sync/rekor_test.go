//go:build containers_image_openpgp

package sync

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
