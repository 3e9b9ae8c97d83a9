package sync

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// netError marks a failure of the network transfer itself (as opposed to
// bad content), which is worth retrying.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

// permanentError marks a failure that already went through its retries.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// schemeGuard refuses plain HTTP to a registry not configured insecure:
// go-containerregistry silently uses http for loopback, *.local and
// RFC 1918 addresses.
type schemeGuard struct {
	inner     http.RoundTripper
	allowHTTP bool
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !g.allowHTTP {
		return nil, fmt.Errorf("%w: %s speaks plain HTTP; allow it in registries.conf (insecure = true) or with --tls-verify=false", ErrInsecure, r.URL.Host)
	}
	return g.inner.RoundTrip(r)
}

// registryFetcher reads one repository of a registry over the distribution
// API, with go-containerregistry's authentication handshake and its own
// retries.
type registryFetcher struct {
	repo   name.Repository
	client *http.Client
	o      *options
}

func (f *registryFetcher) String() string { return "docker://" + f.repo.Name() }

// manifestAccept lists the manifest types Pull understands.
var manifestAccept = strings.Join([]string{
	string(types.OCIImageIndex), string(types.OCIManifestSchema1),
	string(types.DockerManifestList), string(types.DockerManifestSchema2),
}, ", ")

// newRegistryFetcher connects to a repository ("host/path"): it resolves
// credentials and pings the registry for its authentication scheme.
// Connection failures of the ping are retried only when last is set (no
// further mirror or primary to fall back to).
func newRegistryFetcher(ctx context.Context, ep endpoint, last bool, o *options, creds func(repo string) (authn.Authenticator, error)) (*registryFetcher, error) {
	repoName := ep.repo
	host, _, _ := strings.Cut(repoName, "/")
	insecure := ep.insecure || slices.Contains(o.insecure, host)
	if r, err := name.NewRepository(repoName, name.WeakValidation); err == nil && slices.Contains(o.insecure, r.RegistryStr()) {
		insecure = true
	}
	nopts := []name.Option{name.WeakValidation}
	if insecure {
		nopts = append(nopts, name.Insecure)
	}
	repo, err := name.NewRepository(repoName, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadReference, err)
	}
	credKey := repo.RegistryStr() + "/" + repo.RepositoryStr()
	if repo.RegistryStr() == name.DefaultRegistry {
		credKey = "docker.io/" + repo.RepositoryStr()
	}
	auth, err := creds(credKey)
	if err != nil {
		return nil, err
	}
	base := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: o.stall,
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: insecure}, //nolint:gosec // only for registries the operator named insecure
	}
	guard := &schemeGuard{inner: base, allowHTTP: insecure}
	var rt http.RoundTripper
	ping := func() error {
		var err error
		rt, err = transport.NewWithContext(ctx, repo.Registry, auth, guard, []string{repo.Scope(transport.PullScope)})
		return err
	}
	if last {
		err = withRetry(ctx, o, "ping "+repo.RegistryStr(), ping)
	} else {
		err = ping()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFetch, repo.RegistryStr(), classify(err))
	}
	return &registryFetcher{repo: repo, client: &http.Client{Transport: rt}, o: o}, nil
}

// retryable tells transfer failures worth another try from final answers.
func retryable(err error) bool {
	var pe *permanentError
	if errors.As(err, &pe) || errors.Is(err, ErrInsecure) {
		return false
	}
	var ne *netError
	if errors.As(err, &ne) {
		return true
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, context.DeadlineExceeded)
}

// withRetry runs fn until it succeeds, fails with a non-retryable error or
// the retries are used up, doubling the wait each time.
func withRetry(ctx context.Context, o *options, what string, fn func() error) error {
	wait := o.backoff
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || !retryable(err) || attempt >= o.retries || ctx.Err() != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		o.log.Warn("retrying", "what", what, "attempt", attempt+1, "wait", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// get issues one GET to the registry and maps failures to sentinels.
// rng, when set, is a Range header value; 206 is then a success too.
func (f *registryFetcher) get(ctx context.Context, path, accept, rng string) (*http.Response, error) {
	u := fmt.Sprintf("https://%s/v2/%s/%s", f.repo.RegistryStr(), f.repo.RepositoryStr(), path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	req.Header.Set("User-Agent", f.o.userAgent)
	resp, err := f.client.Do(req)
	if err != nil {
		if errors.Is(err, ErrInsecure) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &netError{err}
	}
	if resp.StatusCode == http.StatusOK || (rng != "" && resp.StatusCode == http.StatusPartialContent) {
		return resp, nil
	}
	err = transport.CheckError(resp, http.StatusOK)
	resp.Body.Close()
	return nil, err
}

func mapRegistryError(err error, what string) error {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %s: %w", ErrNotFound, what, err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrFetch, what, classify(err))
}

// classify adds ErrUnauthorized or ErrUnreachable to a registry failure
// that is one, so callers can name the fix without knowing ggcr.
func classify(err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	var op *net.OpError
	var dns *net.DNSError
	if errors.As(err, &op) || errors.As(err, &dns) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

func (f *registryFetcher) manifest(ctx context.Context, ref string, max int64) ([]byte, error) {
	what := f.String() + ":" + ref
	if strings.HasPrefix(ref, "sha256:") {
		what = f.String() + "@" + ref
	}
	var b []byte
	err := withRetry(ctx, f.o, "manifest "+what, func() error {
		resp, err := f.get(ctx, "manifests/"+ref, manifestAccept, "")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err = readLimited(resp.Body, max, "manifest")
		if err != nil && !errors.Is(err, ErrLimit) {
			return &netError{err}
		}
		return err
	})
	if err != nil {
		if errors.Is(err, ErrLimit) {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return nil, mapRegistryError(err, what)
	}
	return b, nil
}

// blob opens a blob. When size is known, a transfer that breaks off is
// resumed where it stopped with a Range request (go-containerregistry
// retries only whole requests), up to the retry budget.
func (f *registryFetcher) blob(ctx context.Context, d v1.Hash, size int64) (io.ReadCloser, error) {
	sr, err := f.openBlob(ctx, d, 0, size)
	if err != nil {
		return nil, err
	}
	return &resumingReader{f: f, ctx: ctx, d: d, size: size, cur: sr}, nil
}

// openBlob GETs a blob from offset off on (a Range request when off > 0).
func (f *registryFetcher) openBlob(ctx context.Context, d v1.Hash, off, size int64) (*stallReader, error) {
	what := f.String() + "@" + d.String()
	bctx, cancel := context.WithCancel(ctx)
	rng := ""
	if off > 0 {
		rng = fmt.Sprintf("bytes=%d-%d", off, size-1)
	}
	var resp *http.Response
	err := withRetry(ctx, f.o, "blob "+what, func() error {
		var err error
		resp, err = f.get(bctx, "blobs/"+d.String(), "", rng)
		return err
	})
	if err != nil {
		cancel()
		return nil, mapRegistryError(err, what)
	}
	body := resp.Body
	if off > 0 {
		if resp.StatusCode == http.StatusPartialContent {
			if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", off)) {
				body.Close()
				cancel()
				return nil, fmt.Errorf("%w: %s: resuming at %d, the registry sent range %q", ErrFetch, what, off, cr)
			}
		} else if _, err := io.CopyN(io.Discard, body, off); err != nil { // Range ignored: skip
			body.Close()
			cancel()
			return nil, &netError{err}
		}
	}
	sr := &stallReader{body: body, parent: ctx, cancel: cancel, stall: f.o.stall}
	sr.timer = time.AfterFunc(f.o.stall, cancel)
	return sr, nil
}

// resumingReader reads a blob, reopening it at the current offset when the
// transfer fails midway.
type resumingReader struct {
	f       *registryFetcher
	ctx     context.Context
	d       v1.Hash
	size    int64
	cur     *stallReader
	off     int64
	resumes int
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			if err := r.reopen(); err != nil {
				return 0, err
			}
		}
		n, err := r.cur.Read(p)
		r.off += int64(n)
		var ne *netError
		if err == nil || err == io.EOF || !errors.As(err, &ne) || r.size <= 0 || r.off >= r.size || r.ctx.Err() != nil {
			return n, err
		}
		if r.resumes >= r.f.o.retries {
			return n, &permanentError{fmt.Errorf("%w: blob %s: gave up after %d resumed transfers: %w", ErrFetch, r.d, r.resumes, err)}
		}
		r.f.o.log.Warn("blob transfer broke off; resuming", "blob", r.d, "offset", r.off, "err", err)
		r.cur.Close()
		r.cur = nil
		r.resumes++
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resumingReader) reopen() error {
	wait := r.f.o.backoff << (r.resumes - 1)
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-time.After(wait):
	}
	sr, err := r.f.openBlob(r.ctx, r.d, r.off, r.size)
	if err != nil {
		return &permanentError{err}
	}
	r.cur = sr
	return nil
}

func (r *resumingReader) Close() error {
	if r.cur == nil {
		return nil
	}
	return r.cur.Close()
}

// stallReader reads a response body, cancelling the request when no data
// arrives for stall, and marks transfer failures as netError.
type stallReader struct {
	body   io.ReadCloser
	parent context.Context
	cancel context.CancelFunc
	timer  *time.Timer
	stall  time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if n > 0 {
		s.timer.Reset(s.stall)
	}
	if err != nil && err != io.EOF {
		if s.parent.Err() != nil {
			return n, s.parent.Err()
		}
		if errors.Is(err, context.Canceled) {
			err = fmt.Errorf("no data for %s: %w", s.stall, err)
		}
		return n, &netError{err}
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.timer.Stop()
	s.cancel()
	return s.body.Close()
}
