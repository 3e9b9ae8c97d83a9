// Package verity computes fs-verity file digests in pure Go and enables and
// measures fs-verity on files through the kernel's ioctls.
//
// A digest is exactly the kernel's "file digest": the hash of the 256-byte
// fs-verity descriptor that holds the Merkle tree root, the file size, the
// hash algorithm and the block size (4096 bytes, no salt). It equals what
// `fsverity digest` prints and what FS_IOC_MEASURE_VERITY returns.
//
// Computing digests needs no kernel support:
//
//   - Hasher (New) is an io.Writer for data that streams past once (a layer
//     being unpacked); its memory is bounded by the tree depth.
//   - DigestReader, DigestBytes: one-shot helpers over it.
//   - DigestFile, DigestFileHandle: files, hashed on all cores when large;
//     they refuse non-regular files (ErrNotRegular) and never block on a
//     FIFO.
//
// Enable, Measure, IsEnabled and Supported use the kernel's fs-verity
// ioctls; without fs-verity they fail with ErrNotSupported.
package verity

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Algorithm is an fs-verity hash algorithm, numbered as the kernel numbers
// them (FS_VERITY_HASH_ALG_*).
type Algorithm uint8

// The algorithms fs-verity supports.
const (
	SHA256 Algorithm = 1
	SHA512 Algorithm = 2
)

// BlockSize is the fs-verity data and Merkle-tree block size used throughout.
const BlockSize = 4096

// String returns "sha256" or "sha512", as fsverity-utils names them.
func (a Algorithm) String() string {
	switch a {
	case SHA256:
		return "sha256"
	case SHA512:
		return "sha512"
	}
	return fmt.Sprintf("alg%d", uint8(a))
}

// Size returns the length in bytes of the algorithm's digest (0 if unknown).
func (a Algorithm) Size() int {
	switch a {
	case SHA256:
		return 32
	case SHA512:
		return 64
	}
	return 0
}

// ParseAlgorithm parses "sha256" or "sha512".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "sha256":
		return SHA256, nil
	case "sha512":
		return SHA512, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownAlgorithm, s)
}

// ErrUnknownAlgorithm is returned for a hash algorithm other than SHA-256 or SHA-512.
var ErrUnknownAlgorithm = errors.New("verity: unknown hash algorithm")

// ErrBadDigest is returned when a digest string does not parse.
var ErrBadDigest = errors.New("verity: malformed digest")

// Errors about files. They are always wrapped with the file's path
// ("PATH: reason"), so their text has no "verity:" prefix.
var (
	// ErrNotRegular: DigestFile was given a directory, FIFO, device,
	// socket or other non-regular file.
	ErrNotRegular = errors.New("not a regular file")
	// ErrNotSupported: the kernel or the filesystem does not support
	// fs-verity (the ioctl failed with EOPNOTSUPP or ENOTTY). On ext4 and
	// f2fs the filesystem also needs the "verity" feature flag.
	ErrNotSupported = errors.New("fs-verity not supported by the kernel or filesystem")
	// ErrNotEnabled: Measure on a file that has no fs-verity (ENODATA).
	ErrNotEnabled = errors.New("fs-verity not enabled on the file")
	// ErrFileBusy: Enable on a file that has a writable file descriptor
	// open somewhere (ETXTBSY), possibly one inherited by a forked child
	// that has not yet called exec. Retrying later may succeed.
	ErrFileBusy = errors.New("file is open for writing")
	// ErrAlreadyEnabled: Enable on a file that already has fs-verity
	// (EEXIST). Measure gives its digest.
	ErrAlreadyEnabled = errors.New("fs-verity already enabled on the file")
)

// Digest is an fs-verity file digest together with its algorithm. It is a
// comparable value: two digests are equal when algorithm and bytes are. The
// zero Digest is invalid (IsZero reports true).
type Digest struct {
	alg Algorithm
	sum [64]byte
}

// NewDigest makes a Digest from raw bytes, which must have the algorithm's size.
func NewDigest(alg Algorithm, b []byte) (Digest, error) {
	if alg.Size() == 0 {
		return Digest{}, fmt.Errorf("%w: %d", ErrUnknownAlgorithm, alg)
	}
	if len(b) != alg.Size() {
		return Digest{}, fmt.Errorf("%w: %d bytes for %s", ErrBadDigest, len(b), alg)
	}
	d := Digest{alg: alg}
	copy(d.sum[:], b)
	return d, nil
}

// Algorithm returns the digest's hash algorithm.
func (d Digest) Algorithm() Algorithm { return d.alg }

// Bytes returns the raw digest bytes (32 for SHA-256, 64 for SHA-512).
func (d Digest) Bytes() []byte { return append([]byte(nil), d.sum[:d.alg.Size()]...) }

// Hex returns the digest in lowercase hex, without the algorithm prefix.
func (d Digest) Hex() string { return hex.EncodeToString(d.sum[:d.alg.Size()]) }

// String returns "sha256:<hex>" (the form `fsverity digest` prints).
func (d Digest) String() string {
	if d.IsZero() {
		return "<no digest>"
	}
	return d.alg.String() + ":" + d.Hex()
}

// IsZero reports whether d is the zero (invalid) Digest.
func (d Digest) IsZero() bool { return d.alg == 0 }

// ObjectPath returns the digest's place in a fanned-out object directory:
// the first byte in hex, a slash, then the rest ("ab/cdef...").
func (d Digest) ObjectPath() string {
	n := d.alg.Size()
	if n == 0 {
		return ""
	}
	var b [2*len(Digest{}.sum) + 1]byte // one allocation: the string
	hex.Encode(b[:2], d.sum[:1])
	b[2] = '/'
	hex.Encode(b[3:], d.sum[1:n])
	return string(b[:2*n+1])
}

// MarshalText implements encoding.TextMarshaler ("sha256:<hex>").
func (d Digest) MarshalText() ([]byte, error) {
	if d.IsZero() {
		return nil, fmt.Errorf("%w: zero digest", ErrBadDigest)
	}
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	v, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDigest parses "sha256:<64 hex>" or "sha512:<128 hex>". A bare hex
// string is accepted too; its length picks the algorithm.
func ParseDigest(s string) (Digest, error) {
	alg := Algorithm(0)
	h := s
	if i := strings.IndexByte(s, ':'); i >= 0 {
		a, err := ParseAlgorithm(s[:i])
		if err != nil {
			return Digest{}, fmt.Errorf("%w: %q", ErrBadDigest, s)
		}
		alg, h = a, s[i+1:]
	}
	if alg == 0 {
		switch len(h) {
		case 64:
			alg = SHA256
		case 128:
			alg = SHA512
		default:
			return Digest{}, fmt.Errorf("%w: %q", ErrBadDigest, s)
		}
	}
	if len(h) != 2*alg.Size() || strings.ToLower(h) != h {
		return Digest{}, fmt.Errorf("%w: %q", ErrBadDigest, s)
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return Digest{}, fmt.Errorf("%w: %q", ErrBadDigest, s)
	}
	return NewDigest(alg, b)
}
