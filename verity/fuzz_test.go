package verity

import (
	"math/rand/v2"
	"testing"
)

// FuzzDigest feeds the streaming Hasher an input in random write chunks
// and compares its digest with the whole-buffer reference implementation.
// The input is data, repeated to len(data)+extra%(1<<21) bytes so that
// short fuzz inputs still reach the tree-level boundaries (64 and 128
// blocks) and two-level trees.
func FuzzDigest(f *testing.F) {
	f.Add([]byte{}, uint32(0), uint64(0), false)
	f.Add([]byte{0}, uint32(0), uint64(1), true)
	f.Add([]byte("abc"), uint32(4093), uint64(2), false)
	f.Add([]byte("fs-verity"), uint32(128*4096-9), uint64(3), false)
	f.Add([]byte("fs-verity"), uint32(64*4096-8), uint64(4), true)
	f.Fuzz(func(t *testing.T, data []byte, extra uint32, chunkSeed uint64, sha512 bool) {
		alg := SHA256
		if sha512 {
			alg = SHA512
		}
		n := len(data) + int(extra%(1<<21))
		input := make([]byte, n)
		if len(data) > 0 {
			for i := 0; i < n; i += len(data) {
				copy(input[i:], data)
			}
		}
		want := refDigest(input, alg)
		rng := rand.New(rand.NewPCG(chunkSeed, chunkSeed>>32))
		h := New(alg)
		for p := input; len(p) > 0; {
			var k int
			switch rng.IntN(4) {
			case 0:
				k = rng.IntN(16)
			case 1:
				k = rng.IntN(2 * BlockSize)
			case 2:
				k = BlockSize
			default:
				k = rng.IntN(64 * BlockSize)
			}
			k = min(k, len(p))
			if _, err := h.Write(p[:k]); err != nil {
				t.Fatal(err)
			}
			p = p[k:]
		}
		if got := h.Sum(); got != want {
			t.Fatalf("%s: %d bytes: streaming %v, reference %v", alg, n, got, want)
		}
		if got := DigestBytes(input, alg); got != want {
			t.Fatalf("%s: %d bytes: DigestBytes %v, reference %v", alg, n, got, want)
		}
	})
}
