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
	var bytesRead int64
	var last layerStats
	cr := &digestReader{r: r, h: sha256.New(), max: desc.Size,
		tooBig: fmt.Errorf("%w: blob %s is larger than its descriptor's %d bytes", ErrDigestMismatch, desc.Digest, desc.Size)}
	if progress != nil {
		cr.onRead = func(n int64) { bytesRead = n; progress(n, last) }
	}
	zr, closeZ, err := decompress(cr, lim)
	if err != nil {
		return nil, layerStats{}, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer closeZ()
	ur := &digestReader{r: zr, h: sha256.New(), max: lim.MaxLayerSize,
		tooBig: fmt.Errorf("%w: layer %s unpacks to more than %d bytes", ErrLimit, desc.Digest, lim.MaxLayerSize)}
	entries, st, err := readLayer(ctx, ur, objs, lim, func(s layerStats) {
		last = s
		if progress != nil {
			progress(bytesRead, s)
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
	if _, err := io.Copy(io.Discard, ur); err != nil {
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
