package sync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/verity"
)

// recordVersion is the format version of layer records.
const recordVersion = 1

// layerRecord is what a pull remembers of an unpacked layer, keyed by its
// diff ID and the store's digest algorithm: the layer's entries with the
// digests of the objects holding its files. Replaying it onto the tree of
// the lower layers (after linking each object) gives what unpacking the
// layer gives, without fetching it.
type layerRecord struct {
	Version   int     `json:"version"`
	DiffID    v1.Hash `json:"diff_id"`
	Algorithm string  `json:"algorithm"`
	Entries   []entry `json:"entries"`
}

func recordPath(dir string, diffID v1.Hash, alg verity.Algorithm) string {
	return filepath.Join(dir, alg.String()+"-"+diffID.Hex+".json.gz")
}

// encodeRecord serialises a record (gzip-compressed JSON).
func encodeRecord(r *layerRecord) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(r); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeRecord parses a record and checks it belongs to diffID and alg and
// that its entries are well formed.
func decodeRecord(r io.Reader, diffID v1.Hash, alg verity.Algorithm, lim Limits) (*layerRecord, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	defer zr.Close()
	var rec layerRecord
	if err := json.NewDecoder(io.LimitReader(zr, 1<<30)).Decode(&rec); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if rec.Version != recordVersion || rec.DiffID != diffID || rec.Algorithm != alg.String() {
		return nil, fmt.Errorf("%w: version %d, diff_id %s, algorithm %s", ErrBadRecord, rec.Version, rec.DiffID, rec.Algorithm)
	}
	if len(rec.Entries) > lim.MaxFiles {
		return nil, fmt.Errorf("%w: %d entries", ErrBadRecord, len(rec.Entries))
	}
	for i := range rec.Entries {
		e := &rec.Entries[i]
		for _, p := range []string{e.Path, e.Link} {
			if c, err := cleanPath(p); err != nil || c != p {
				return nil, fmt.Errorf("%w: path %q", ErrBadRecord, p)
			}
		}
		if !e.Digest.IsZero() && e.Digest.Algorithm() != alg {
			return nil, fmt.Errorf("%w: object %s", ErrBadRecord, e.Digest)
		}
	}
	return &rec, nil
}

// loadRecord reads the record of a layer; (nil, nil) when there is none.
func loadRecord(dir string, diffID v1.Hash, alg verity.Algorithm, lim Limits) (*layerRecord, error) {
	f, err := os.Open(recordPath(dir, diffID, alg))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rec, err := decodeRecord(f, diffID, alg, lim)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return rec, nil
}

// saveRecord writes a record atomically: temp file, fsync, rename, fsync
// of the directory.
func saveRecord(dir string, rec *layerRecord, alg verity.Algorithm) error {
	b, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(recordPath(dir, rec.DiffID, alg), b, 0o600)
}
