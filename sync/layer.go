package sync

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// digestReader hashes and counts what passes through it and fails once
// more than max bytes came (max < 0: unlimited).
type digestReader struct {
	r      io.Reader
	h      hash.Hash
	n      int64
	max    int64
	tooBig error
	onRead func(n int64)
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	if d.max >= 0 && d.n > d.max {
		return n, d.tooBig
	}
	if d.onRead != nil && n > 0 {
		d.onRead(d.n)
	}
	return n, err
}

func (d *digestReader) sum() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d.h.Sum(nil))}
}

// Compressed stream magic numbers.
var (
	magicGzip = []byte{0x1f, 0x8b}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress returns the uncompressed stream of a layer blob, recognising
// gzip and zstd by their magic numbers (anything else is taken as a plain
// tar, which the tar reader then checks).
func decompress(r io.Reader, lim Limits) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case bytes.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %w", ErrBadLayer, err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(head, magicZstd):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(uint64(lim.MaxWindow)))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: zstd: %w", ErrBadLayer, err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// unpackLayer reads one compressed layer blob from r: it checks the blob
// against desc (size and digest), decompresses it as it arrives, checks the
// uncompressed stream against diffID, and returns the layer's entries with
// regular-file content already stored through objs. Entries are only
// returned when every check passed; the whole blob is read to EOF.
func unpackLayer(ctx context.Context, r io.Reader, desc v1.Descriptor, diffID v1.Hash, objs ObjectAdder, lim Limits, progress func(bytes int64, st layerStats)) ([]entry, layerStats, error) {
	var bytesRead atomic.Int64 // written by the producer goroutine
	cr := &digestReader{r: r, h: sha256.New(), max: desc.Size,
		tooBig: fmt.Errorf("%w: blob %s is larger than its descriptor's %d bytes", ErrDigestMismatch, desc.Digest, desc.Size)}
	if progress != nil {
		cr.onRead = bytesRead.Store
	}
	zr, closeZ, err := decompress(cr, lim)
	if err != nil {
		return nil, layerStats{}, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	ur := &digestReader{r: zr, h: sha256.New(), max: lim.MaxLayerSize,
		tooBig: fmt.Errorf("%w: layer %s unpacks to more than %d bytes", ErrLimit, desc.Digest, lim.MaxLayerSize)}
	// Network, both digests and decompression on one core; tar, object
	// digests and writes on the other.
	ar := newAsyncReader(ur, 256<<10, 4, closeZ)
	defer ar.Close()
	entries, st, err := readLayer(ctx, ar, objs, lim, func(s layerStats) {
		if progress != nil {
			progress(bytesRead.Load(), s)
		}
	})
	// blame turns a content error into a digest mismatch when the blob
	// itself is not what the manifest names (a corrupted or tampered
	// transfer), rather than report what the corruption broke.
	blame := func(err error) error {
		var ne *netError
		if errors.As(err, &ne) || ctx.Err() != nil {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		// Finish the producer (it stops at its first error) before
		// reading the compressed stream here.
		if _, aerr := io.Copy(io.Discard, ar); errors.As(aerr, &ne) {
			return fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		if _, cerr := io.Copy(io.Discard, cr); cerr == nil && (cr.n != desc.Size || cr.sum() != desc.Digest) {
			return fmt.Errorf("%w: blob %s: content does not match its digest (%v)", ErrDigestMismatch, desc.Digest, err)
		}
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if err != nil {
		return nil, st, blame(err)
	}
	// The tar reader stops at the end-of-archive blocks: read the rest of
	// both streams so that both digests cover everything.
	if _, err := io.Copy(io.Discard, ar); err != nil {
		return nil, st, blame(fmt.Errorf("%w: %w", ErrBadLayer, unexpected(err)))
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, st, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if cr.n != desc.Size {
		return nil, st, fmt.Errorf("%w: blob %s has %d bytes, its descriptor says %d", ErrDigestMismatch, desc.Digest, cr.n, desc.Size)
	}
	if got := cr.sum(); got != desc.Digest {
		return nil, st, fmt.Errorf("%w: blob %s has digest %s", ErrDigestMismatch, desc.Digest, got)
	}
	if got := ur.sum(); got != diffID {
		return nil, st, fmt.Errorf("%w: layer %s unpacks to %s, the config's diff_id is %s", ErrDigestMismatch, desc.Digest, got, diffID)
	}
	return entries, st, nil
}

// asyncReader reads r in its own goroutine into a few buffers, so that the
// producer (network, digests, decompression) and the consumer (tar parsing,
// object hashing and writing) run on different cores. Memory is bounded by
// n buffers of size bytes. Once Read has returned an error (io.EOF
// included) the goroutine has finished, and whatever r wraps may be used
// again; onExit runs when the goroutine ends.
type asyncReader struct {
	full  chan []byte
	free  chan []byte
	done  chan struct{}
	errCh chan error
	orig  []byte
	cur   []byte
	err   error
}

func newAsyncReader(r io.Reader, size, n int, onExit func()) *asyncReader {
	a := &asyncReader{full: make(chan []byte, n), free: make(chan []byte, n), done: make(chan struct{}), errCh: make(chan error, 1)}
	for range n {
		a.free <- make([]byte, size)
	}
	go func() {
		defer onExit()
		defer close(a.full)
		for {
			var buf []byte
			select {
			case buf = <-a.free:
			case <-a.done:
				a.errCh <- errClosed
				return
			}
			m, err := fill(r, buf)
			if m > 0 {
				select {
				case a.full <- buf[:m]:
				case <-a.done:
					a.errCh <- errClosed
					return
				}
			}
			if err != nil {
				a.errCh <- err
				return
			}
		}
	}()
	return a
}

var errClosed = errors.New("reader closed")

// fill reads into buf until it is full or r fails, returning r's error
// unchanged (unlike io.ReadFull, which turns an early io.EOF into
// io.ErrUnexpectedEOF and so hides a decompressor's own).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (a *asyncReader) Read(p []byte) (int, error) {
	if len(a.cur) == 0 {
		if a.orig != nil {
			a.free <- a.orig
			a.orig = nil
		}
		if a.err != nil {
			return 0, a.err
		}
		buf, ok := <-a.full
		if !ok {
			a.err = <-a.errCh
			return 0, a.err
		}
		a.orig, a.cur = buf[:cap(buf)], buf
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// Close stops the goroutine; it may stay blocked in r.Read until that
// returns (the caller closes the network body).
func (a *asyncReader) Close() {
	select {
	case <-a.done:
	default:
		close(a.done)
	}
}
