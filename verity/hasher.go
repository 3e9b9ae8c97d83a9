package verity

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
)

// maxDigestSize is the largest hash size of any supported algorithm.
const maxDigestSize = 64

// descriptorSize is the size of struct fsverity_descriptor.
const descriptorSize = 256

// logBlockSize is log2(BlockSize), as stored in the descriptor.
const logBlockSize = 12

// hashBlock writes the hash of block (which is exactly BlockSize bytes) to
// dst. It does not allocate.
func (a Algorithm) hashBlock(dst, block []byte) {
	switch a {
	case SHA256:
		s := sha256.Sum256(block)
		copy(dst, s[:])
	case SHA512:
		s := sha512.Sum512(block)
		copy(dst, s[:])
	default:
		panic("verity: hashBlock with unknown algorithm")
	}
}

// fanout returns how many hashes fit in one Merkle tree block.
func (a Algorithm) fanout() int { return BlockSize / a.Size() }

// level is one level of the Merkle tree under construction: the block of
// hashes that is being filled. Level 0 collects the hashes of data blocks.
type level struct {
	buf []byte // BlockSize bytes once allocated
	n   int    // bytes of buf in use
}

// Hasher computes an fs-verity file digest from a stream of writes. Its
// memory is one data block plus one block per Merkle tree level (a 1 GiB
// file needs four levels), allocated on first use, so a new Hasher is
// about 400 bytes. The zero Hasher is not usable; call New. A Hasher is not
// safe for concurrent use.
type Hasher struct {
	alg    Algorithm
	size   int64
	part   []byte // pending partial data block; cap BlockSize once allocated
	levels [maxLevels]level
}

// maxLevels bounds the tree height: 2^51 data blocks (an int64 size) take
// at most ten levels of hashes with SHA-512's fan-out of 64.
const maxLevels = 11

// New returns a Hasher for alg. It panics if alg is not SHA256 or SHA512
// (use ParseAlgorithm on untrusted input first).
func New(alg Algorithm) *Hasher {
	if alg.Size() == 0 {
		panic(fmt.Sprintf("verity: New(%s): %v", alg, ErrUnknownAlgorithm))
	}
	return &Hasher{alg: alg}
}

// Algorithm returns the Hasher's hash algorithm.
func (h *Hasher) Algorithm() Algorithm { return h.alg }

// Size returns the number of bytes written since New or Reset.
func (h *Hasher) Size() int64 { return h.size }

// Reset clears the Hasher for a new file, keeping its buffers.
func (h *Hasher) Reset() {
	h.size = 0
	h.part = h.part[:0]
	for i := range h.levels {
		h.levels[i].n = 0
	}
}

// Write adds p to the file being hashed. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	h.size += int64(n)
	if len(h.part) > 0 {
		k := copy(h.part[len(h.part):BlockSize], p)
		h.part = h.part[:len(h.part)+k]
		p = p[k:]
		if len(h.part) < BlockSize {
			return n, nil
		}
		h.addBlock(h.part)
		h.part = h.part[:0]
	}
	for len(p) >= BlockSize {
		h.addBlock(p[:BlockSize])
		p = p[BlockSize:]
	}
	if len(p) > 0 {
		if h.part == nil {
			h.part = make([]byte, 0, BlockSize)
		}
		h.part = append(h.part, p...)
	}
	return n, nil
}

// ReadFrom reads r to EOF into the Hasher, through a buffer of its own
// rather than io.Copy's small one. It implements io.ReaderFrom.
func (h *Hasher) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, readBufSize)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			_, _ = h.Write(buf[:n])
			total += int64(n)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, err
		}
	}
}

// addBlock hashes one full data block into level 0.
func (h *Hasher) addBlock(block []byte) {
	l := h.level(0)
	ds := h.alg.Size()
	h.alg.hashBlock(l.buf[l.n:l.n+ds], block)
	l.n += ds
	if l.n == BlockSize {
		h.carry(0)
	}
}

// addHash appends one hash to level i, carrying full blocks upwards.
func (h *Hasher) addHash(i int, sum []byte) {
	l := h.level(i)
	l.n += copy(l.buf[l.n:], sum)
	if l.n == BlockSize {
		h.carry(i)
	}
}

// carry hashes the full block at level i into level i+1, and so on up.
func (h *Hasher) carry(i int) {
	ds := h.alg.Size()
	for {
		l := &h.levels[i]
		up := h.level(i + 1)
		h.alg.hashBlock(up.buf[up.n:up.n+ds], l.buf)
		l.n = 0
		up.n += ds
		if up.n < BlockSize {
			return
		}
		i++
	}
}

// level returns level i, allocating its block if needed.
func (h *Hasher) level(i int) *level {
	l := &h.levels[i]
	if l.buf == nil {
		l.buf = make([]byte, BlockSize)
	}
	return l
}

// Sum returns the fs-verity digest of the bytes written so far. It does not
// change the Hasher's state, so more can be written after it.
func (h *Hasher) Sum() Digest {
	var root [maxDigestSize]byte
	h.root(root[:])
	return descriptorDigest(h.alg, h.size, root[:h.alg.Size()])
}

// root writes the Merkle tree root hash to dst (zero for an empty file).
// It does not change h: the pending partial blocks are completed in a
// scratch block, bottom up, each carrying one hash to the level above.
func (h *Hasher) root(dst []byte) {
	ds := h.alg.Size()
	clear(dst[:ds])
	if h.size == 0 {
		return
	}
	var scratch [BlockSize]byte
	var carry [maxDigestSize]byte
	hasCarry := false
	if len(h.part) > 0 {
		copy(scratch[:], h.part)
		clear(scratch[len(h.part):])
		h.alg.hashBlock(carry[:ds], scratch[:])
		hasCarry = true
	}
	count := (h.size + BlockSize - 1) / BlockSize // hashes at level i
	fan := int64(h.alg.fanout())
	i := 0
	for ; count > 1; i++ {
		l := &h.levels[i]
		if l.n > 0 || hasCarry {
			m := copy(scratch[:], l.buf[:l.n])
			if hasCarry {
				m += copy(scratch[m:], carry[:ds])
			}
			clear(scratch[m:])
			h.alg.hashBlock(carry[:ds], scratch[:])
			hasCarry = true
		}
		count = (count + fan - 1) / fan
	}
	if hasCarry {
		copy(dst, carry[:ds])
	} else {
		copy(dst, h.levels[i].buf[:ds])
	}
}

// descriptorDigest hashes the 256-byte fs-verity descriptor for a file of
// size bytes with the given root hash: the kernel's file digest.
func descriptorDigest(alg Algorithm, size int64, root []byte) Digest {
	var desc [descriptorSize]byte
	desc[0] = 1 // version
	desc[1] = byte(alg)
	desc[2] = logBlockSize
	desc[3] = 0 // salt size
	// desc[4:8] reserved
	binary.LittleEndian.PutUint64(desc[8:16], uint64(size))
	copy(desc[16:16+maxDigestSize], root)
	// salt[32] and reserved[144] stay zero.
	d := Digest{alg: alg}
	switch alg {
	case SHA256:
		s := sha256.Sum256(desc[:])
		copy(d.sum[:], s[:])
	case SHA512:
		s := sha512.Sum512(desc[:])
		copy(d.sum[:], s[:])
	}
	return d
}

// DigestReader reads r to EOF and returns its fs-verity digest and length.
// Memory stays bounded by the tree depth whatever the length.
func DigestReader(r io.Reader, alg Algorithm) (Digest, int64, error) {
	if alg.Size() == 0 {
		return Digest{}, 0, fmt.Errorf("%w: %d", ErrUnknownAlgorithm, alg)
	}
	h := New(alg)
	// io.Copy uses r's WriteTo if it has one (no copy through a buffer),
	// else h.ReadFrom.
	n, err := io.Copy(h, r)
	if err != nil {
		return Digest{}, n, err
	}
	return h.Sum(), n, nil
}

// DigestBytes returns the fs-verity digest of b. It panics if alg is not
// SHA256 or SHA512.
func DigestBytes(b []byte, alg Algorithm) Digest {
	h := New(alg)
	_, _ = h.Write(b)
	return h.Sum()
}
