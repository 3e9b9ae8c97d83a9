package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchSize is the input of the throughput benchmarks: 64 MiB plus a
// partial block, held in memory (or in the page cache for the file ones).
const benchSize = 64<<20 + 1234

func benchData(b *testing.B) []byte {
	b.Helper()
	data := make([]byte, benchSize)
	fillRandom(rand.New(rand.NewPCG(3, 4)), data)
	return data
}

// BenchmarkSHA256Baseline is plain crypto/sha256 over the same bytes as
// the digest benchmarks: the single-core ceiling.
func BenchmarkSHA256Baseline(b *testing.B) {
	data := benchData(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		h := sha256.New()
		h.Write(data)
		_ = h.Sum(nil)
	}
}

// BenchmarkSHA512Baseline is plain crypto/sha512 over the same bytes.
func BenchmarkSHA512Baseline(b *testing.B) {
	data := benchData(b)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		h := sha512.New()
		h.Write(data)
		_ = h.Sum(nil)
	}
}

// BenchmarkDigestBytes is the single-core streaming digest over memory.
func BenchmarkDigestBytes(b *testing.B) {
	data := benchData(b)
	for _, alg := range []Algorithm{SHA256, SHA512} {
		b.Run(alg.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_ = DigestBytes(data, alg)
			}
		})
	}
}

// BenchmarkDigestReader streams from a reader (single core, 256 KiB reads).
func BenchmarkDigestReader(b *testing.B) {
	data := benchData(b)
	for _, alg := range []Algorithm{SHA256, SHA512} {
		b.Run(alg.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, _, err := DigestReader(bytes.NewReader(data), alg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDigestFile hashes a file in the page cache on all cores.
func BenchmarkDigestFile(b *testing.B) {
	path := filepath.Join(b.TempDir(), "data")
	if err := os.WriteFile(path, benchData(b), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, alg := range []Algorithm{SHA256, SHA512} {
		b.Run(alg.String(), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				if _, err := DigestFile(context.Background(), path, alg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDigestSmall is New+Write+Sum of a 4000-byte object, the
// common case in an OS image.
func BenchmarkDigestSmall(b *testing.B) {
	data := make([]byte, 4000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		h := New(SHA256)
		_, _ = h.Write(data)
		_ = h.Sum()
	}
}
