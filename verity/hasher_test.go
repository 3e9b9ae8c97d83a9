package verity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// refDigest is the reference fs-verity digest: the whole input in memory,
// the Merkle tree built level by level, then the descriptor hashed. It is
// written from the kernel's documentation (fsverity.rst) and shares no
// code with the package.
func refDigest(data []byte, alg Algorithm) Digest {
	h := func(b []byte) []byte {
		if alg == SHA512 {
			s := sha512.Sum512(b)
			return s[:]
		}
		s := sha256.Sum256(b)
		return s[:]
	}
	root := make([]byte, 64)
	if len(data) > 0 {
		cur := data
		for {
			var next []byte
			for off := 0; off < len(cur); off += 4096 {
				blk := make([]byte, 4096)
				copy(blk, cur[off:min(off+4096, len(cur))])
				next = append(next, h(blk)...)
			}
			if len(next) == alg.Size() {
				copy(root, next)
				break
			}
			cur = next
		}
	}
	desc := make([]byte, 0, 256)
	desc = append(desc, 1, byte(alg), 12, 0, 0, 0, 0, 0)
	desc = binary.LittleEndian.AppendUint64(desc, uint64(len(data)))
	desc = append(desc, root...)
	desc = append(desc, make([]byte, 32+144)...)
	d, err := NewDigest(alg, h(desc))
	if err != nil {
		panic(err)
	}
	return d
}

// fsverityDigest runs the real `fsverity digest` on path.
func fsverityDigest(t testing.TB, path string, alg Algorithm) Digest {
	t.Helper()
	out, err := exec.Command("fsverity", "digest", "--hash-alg="+alg.String(), "--block-size=4096", path).CombinedOutput()
	if err != nil {
		t.Fatalf("fsverity digest %s: %v\n%s", path, err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 2 || fields[1] != path {
		t.Fatalf("fsverity digest %s: unexpected output %q", path, out)
	}
	d, err := ParseDigest(fields[0])
	if err != nil {
		t.Fatalf("fsverity digest %s: %v", path, err)
	}
	return d
}

// makeFile creates a file of size bytes at path: random data for small
// sizes; for large ones a sparse file with random 4 KiB patches at random
// offsets (so the tree is not all zero hashes), and random bytes at the
// very end.
func makeFile(t testing.TB, path string, size int64, rng *rand.Rand) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if size <= 4<<20 {
		buf := make([]byte, size)
		fillRandom(rng, buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	patch := make([]byte, 4096)
	for range 64 {
		fillRandom(rng, patch)
		off := rng.Int64N(size)
		n := min(int64(len(patch)), size-off)
		if _, err := f.WriteAt(patch[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	fillRandom(rng, patch[:1])
	if _, err := f.WriteAt(patch[:1], size-1); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// chunkedReader returns its data in reads of random lengths.
type chunkedReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	n := 1 + c.rng.IntN(c.max)
	return c.r.Read(p[:min(n, len(p))])
}

// TestDigestMatchesFsverity checks the streaming and the file APIs against
// the real `fsverity digest` at every tree-level boundary of both
// algorithms, and at random sizes up to 1 GiB (sparse files).
func TestDigestMatchesFsverity(t *testing.T) {
	if _, err := exec.LookPath("fsverity"); err != nil {
		t.Fatalf("fsverity (Debian package fsverity, see DEB_PACKAGES): %v", err)
	}
	const b = BlockSize
	sizes := []int64{
		0, 1, b - 1, b, b + 1,
		64*b - 1, 64 * b, 64*b + 1, // SHA-512 level 1 boundary
		128*b - 1, 128 * b, 128*b + 1, // SHA-256 level 1 boundary
		64*64*b - 1, 64 * 64 * b, 64*64*b + 1, // SHA-512 three levels
		128*128*b - 1, 128 * 128 * b, 128*128*b + 1, // SHA-256 three levels
		parallelMin - 1, parallelMin, parallelMin + 1, // serial/parallel switch
		chunkSize*3 + 5*b + 17, // parallel, partial last subtree
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("random sizes seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	if testing.Short() {
		t.Logf("-short: no sizes above 64 MiB")
	} else {
		sizes = append(sizes, 64*64*64*b+1) // SHA-512 four levels
		for range 2 {
			sizes = append(sizes, rng.Int64N(1<<30)+1)
		}
	}
	dir := t.TempDir()
	for _, size := range sizes {
		path := filepath.Join(dir, fmt.Sprintf("f%d", size))
		makeFile(t, path, size, rng)
		for _, alg := range []Algorithm{SHA256, SHA512} {
			t.Run(fmt.Sprintf("%s/%d", alg, size), func(t *testing.T) {
				want := fsverityDigest(t, path, alg)
				got, err := DigestFile(context.Background(), path, alg)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("DigestFile = %v, fsverity digest = %v", got, want)
				}
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				// Odd read sizes: a few blocks for small files, about a
				// megabyte for large ones (to keep the test fast).
				maxRead := 3 * BlockSize
				if size > 4<<20 {
					maxRead = 1 << 20
				}
				got, n, err := DigestReader(&chunkedReader{r: f, rng: rng, max: maxRead}, alg)
				if err != nil {
					t.Fatal(err)
				}
				if got != want || n != size {
					t.Errorf("DigestReader = %v, %d; fsverity digest = %v, %d", got, n, want, size)
				}
				if size <= 4<<20 {
					data, err := os.ReadFile(path)
					if err != nil {
						t.Fatal(err)
					}
					if got := DigestBytes(data, alg); got != want {
						t.Errorf("DigestBytes = %v, want %v", got, want)
					}
					if got := refDigest(data, alg); got != want {
						t.Errorf("reference implementation = %v, want %v", got, want)
					}
				}
			})
		}
	}
}

// TestEmptyRoot checks the documented empty-file case: root hash all zero.
func TestEmptyRoot(t *testing.T) {
	for _, alg := range []Algorithm{SHA256, SHA512} {
		h := New(alg)
		root := make([]byte, 64)
		root[0] = 0xff
		h.root(root)
		if !bytes.Equal(root, make([]byte, 64)) {
			t.Errorf("%s: empty root = %x", alg, root)
		}
		if got, want := h.Sum(), descriptorDigest(alg, 0, make([]byte, alg.Size())); got != want {
			t.Errorf("%s: empty digest %v, want %v", alg, got, want)
		}
	}
}

// TestHasherSumReset checks that Sum does not disturb the state and that
// Reset starts a new file.
func TestHasherSumReset(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 130*BlockSize+7)
	fillRandom(rng, data)
	for _, alg := range []Algorithm{SHA256, SHA512} {
		h := New(alg)
		for _, cut := range []int{0, 1, BlockSize, 64*BlockSize + 3, 128 * BlockSize, len(data)} {
			h.Reset()
			_, _ = h.Write(data[:cut])
			if got, want := h.Sum(), refDigest(data[:cut], alg); got != want {
				t.Errorf("%s: Sum after %d bytes = %v, want %v", alg, cut, got, want)
			}
			_, _ = h.Write(data[cut:])
			if got, want := h.Sum(), refDigest(data, alg); got != want {
				t.Errorf("%s: Sum after Sum at %d = %v, want %v", alg, cut, got, want)
			}
			if h.Size() != int64(len(data)) {
				t.Errorf("%s: Size = %d, want %d", alg, h.Size(), len(data))
			}
		}
	}
}

// errReaderAt fails reads at and after failAt, and ends the file at end.
type errReaderAt struct {
	failAt, end int64
	err         error
}

func (r *errReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.failAt {
		return 0, r.err
	}
	n := int64(len(p))
	if off+n > r.end {
		n = max(0, r.end-off)
		clear(p[:n])
		return int(n), io.EOF
	}
	clear(p)
	return len(p), nil
}

// TestParallelErrors checks that read errors and short files surface from
// the parallel path (and that it does not hang).
func TestParallelErrors(t *testing.T) {
	eio := errors.New("simulated EIO")
	const size = 10*chunkSize + 5
	for _, workers := range []int{2, 3, 8} {
		r := &errReaderAt{failAt: 7*chunkSize + BlockSize, end: size, err: eio}
		if _, err := digestParallel(context.Background(), r, size, SHA256, workers); !errors.Is(err, eio) {
			t.Errorf("workers=%d: error %v, want %v", workers, err, eio)
		}
		r = &errReaderAt{failAt: size * 2, end: size - 4096}
		if _, err := digestParallel(context.Background(), r, size, SHA256, workers); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("workers=%d: short file: error %v, want ErrUnexpectedEOF", workers, err)
		}
		if _, err := digestSerial(context.Background(), r, size, SHA256); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("serial: short file: error %v, want ErrUnexpectedEOF", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := digestParallel(ctx, r, size, SHA256, workers); !errors.Is(err, context.Canceled) {
			t.Errorf("workers=%d: cancelled: error %v", workers, err)
		}
	}
	// The parallel result equals the serial one for any worker count.
	r := &errReaderAt{failAt: 1 << 40, end: 1 << 40}
	for _, alg := range []Algorithm{SHA256, SHA512} {
		want, err := digestSerial(context.Background(), r, size, alg)
		if err != nil {
			t.Fatal(err)
		}
		for _, workers := range []int{1, 2, 5} {
			got, err := digestParallel(context.Background(), r, size, alg, workers)
			if err != nil || got != want {
				t.Errorf("%s workers=%d: %v, %v; want %v", alg, workers, got, err, want)
			}
		}
	}
}

// TestDigestFileBadInput checks the refusals of DigestFile.
func TestDigestFileBadInput(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want error
		text string
	}{
		{filepath.Join(dir, "missing"), os.ErrNotExist, "no such file or directory"},
		{dir, ErrNotRegular, "not a regular file (directory)"},
		{fifo, ErrNotRegular, "not a regular file (FIFO)"},
		{link, ErrNotRegular, "not a regular file (directory)"},
		{"/dev/null", ErrNotRegular, "not a regular file (character device)"},
	}
	for _, tt := range tests {
		done := make(chan error, 1)
		go func() {
			_, err := DigestFile(context.Background(), tt.path, SHA256)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, tt.want) {
				t.Errorf("%s: error %v, want %v", tt.path, err, tt.want)
			} else if want := tt.path + ": " + tt.text; err.Error() != want {
				t.Errorf("%s: error text %q, want %q", tt.path, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: DigestFile blocked", tt.path)
		}
	}
	if _, err := DigestFile(context.Background(), dir, Algorithm(9)); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("algorithm 9: error %v", err)
	}
	if _, _, err := DigestReader(strings.NewReader("x"), Algorithm(0)); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("DigestReader algorithm 0: error %v", err)
	}
}

// TestDigestReaderError checks that a reader's error is returned.
func TestDigestReaderError(t *testing.T) {
	eio := errors.New("simulated EIO")
	r := io.MultiReader(strings.NewReader("abc"), &failReader{eio})
	if _, n, err := DigestReader(r, SHA256); !errors.Is(err, eio) || n != 3 {
		t.Errorf("DigestReader = %d, %v; want 3, %v", n, err, eio)
	}
}

type failReader struct{ err error }

func (r *failReader) Read([]byte) (int, error) { return 0, r.err }

// TestNewCheap checks that creating a Hasher and hashing a small object
// stays within a few allocations (objstore makes one per object).
func TestNewCheap(t *testing.T) {
	data := make([]byte, 1000)
	allocs := testing.AllocsPerRun(100, func() {
		h := New(SHA256)
		_, _ = h.Write(data)
		_ = h.Sum()
	})
	if allocs > 5 {
		t.Errorf("New+Write+Sum of 1000 bytes: %v allocations, want ≤ 5", allocs)
	}
}
