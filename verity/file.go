package verity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"syscall"
)

const (
	// readBufSize is the read size of the streaming paths.
	readBufSize = 256 << 10
	// chunkSize is the file range one parallel worker hashes at a time. It
	// is a whole number of level-1 subtrees for both algorithms (128 and 64
	// data blocks).
	chunkSize = 4 << 20
	// chunkReadSize is the ReadAt size inside a chunk.
	chunkReadSize = 1 << 20
	// parallelMin is the smallest file hashed in parallel.
	parallelMin = 2 * chunkSize
)

// DigestFile opens path and returns the fs-verity digest of its contents,
// hashing large files on all cores (see DigestFileHandle). It refuses
// anything but a regular file with an error wrapping ErrNotRegular; a FIFO
// is opened non-blocking, so it never waits for a writer. Errors have the
// form "PATH: reason".
func DigestFile(ctx context.Context, path string, alg Algorithm) (Digest, error) {
	if alg.Size() == 0 {
		return Digest{}, fmt.Errorf("%s: %w: %d", path, ErrUnknownAlgorithm, alg)
	}
	f, fi, err := openRegular(path)
	if err != nil {
		return Digest{}, err
	}
	defer f.Close()
	return digestOpen(ctx, f, fi, alg)
}

// OpenRegular opens path read-only for DigestFileHandle, Enable or
// Measure, and refuses (closing it again) anything but a regular file with
// an error wrapping ErrNotRegular. It opens with O_NONBLOCK, so a FIFO
// without a writer is refused at once instead of blocking the open; on a
// regular file the flag has no effect. Symbolic links are followed.
// Errors have the form "PATH: reason".
func OpenRegular(path string) (*os.File, error) {
	f, _, err := openRegular(path)
	return f, err
}

func openRegular(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, unwrapPathError(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, typeName(fi.Mode()))
	}
	return f, fi, nil
}

// DigestFileHandle returns the fs-verity digest of f's contents, read with
// ReadAt from offset 0 (f's offset is not used). It hashes the Size that
// fstat reports at the start; a file that turns out shorter gives an error
// wrapping io.ErrUnexpectedEOF. Files of 8 MiB and more are split into
// ranges of whole level-1 subtrees, hashed on GOMAXPROCS workers and
// combined in order; memory stays bounded by the worker count. Errors name
// f.Name().
func DigestFileHandle(ctx context.Context, f *os.File, alg Algorithm) (Digest, error) {
	if alg.Size() == 0 {
		return Digest{}, fmt.Errorf("%s: %w: %d", f.Name(), ErrUnknownAlgorithm, alg)
	}
	fi, err := f.Stat()
	if err != nil {
		return Digest{}, fmt.Errorf("%s: %w", f.Name(), unwrapPathError(err))
	}
	return digestOpen(ctx, f, fi, alg)
}

// digestOpen is DigestFileHandle after the fstat.
func digestOpen(ctx context.Context, f *os.File, fi fs.FileInfo, alg Algorithm) (Digest, error) {
	name := f.Name()
	if !fi.Mode().IsRegular() {
		return Digest{}, fmt.Errorf("%s: %w (%s)", name, ErrNotRegular, typeName(fi.Mode()))
	}
	size := fi.Size()
	workers := runtime.GOMAXPROCS(0)
	var (
		d   Digest
		err error
	)
	if size < parallelMin || workers < 2 {
		d, err = digestSerial(ctx, f, size, alg)
	} else {
		d, err = digestParallel(ctx, f, size, alg, workers)
	}
	if err != nil {
		return Digest{}, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

// serialState is the memory of one digestSerial call: a Hasher and a read
// buffer.
type serialState struct {
	h   Hasher
	buf []byte
}

// serialPool recycles serialStates across DigestFile calls, so hashing
// tens of thousands of small files does not allocate (and zero) a buffer
// and tree blocks for each. It is a cache, not state: nothing observable
// depends on what it holds.
var serialPool = sync.Pool{
	New: func() any { return &serialState{buf: make([]byte, chunkReadSize)} },
}

// digestSerial hashes the first size bytes of r on the calling goroutine.
func digestSerial(ctx context.Context, r io.ReaderAt, size int64, alg Algorithm) (Digest, error) {
	st := serialPool.Get().(*serialState)
	defer serialPool.Put(st)
	h, buf := &st.h, st.buf
	h.alg = alg
	h.Reset()
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return Digest{}, err
		}
		n := min(int64(len(buf)), size-off)
		if err := readFullAt(r, buf[:n], off); err != nil {
			return Digest{}, err
		}
		_, _ = h.Write(buf[:n])
		off += n
	}
	return h.Sum(), nil
}

// readFullAt fills p from r at off. A short file gives io.ErrUnexpectedEOF.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read at offset %d: %w", off+int64(n), unwrapPathError(err))
}

// chunkResult is what a worker computes for one chunk: the hashes of its
// whole level-1 subtrees and, for a final partial subtree, the hashes of
// its data blocks.
type chunkResult struct {
	level1 []byte
	leaves []byte
	err    error
}

type chunkJob struct {
	off, n int64
	out    chan chunkResult
}

// digestParallel hashes the first size bytes of r on workers goroutines.
// Chunks are handed out in order, and the combiner consumes them in order;
// at most 2*workers chunks are in flight.
func digestParallel(ctx context.Context, r io.ReaderAt, size int64, alg Algorithm, workers int) (Digest, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan chunkJob)
	order := make(chan chan chunkResult, 2*workers)

	// Producer: hands out chunks in order, and queues their result
	// channels for the combiner in the same order.
	go func() {
		defer close(jobs)
		defer close(order)
		for off := int64(0); off < size; off += chunkSize {
			j := chunkJob{off: off, n: min(chunkSize, size-off), out: make(chan chunkResult, 1)}
			select {
			case order <- j.out:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			w := newChunkWorker(alg)
			for j := range jobs {
				if err := ctx.Err(); err != nil {
					j.out <- chunkResult{err: err}
					continue
				}
				j.out <- w.hash(r, j.off, j.n)
			}
		}()
	}
	// Wait for every worker before returning, so none reads r after the
	// caller closes it.
	defer func() {
		cancel()
		for range order { // drain, so that the producer exits
		}
		for range workers {
			<-done
		}
	}()

	h := New(alg)
	ds := alg.Size()
	for out := range order {
		var res chunkResult
		select {
		case res = <-out:
		case <-ctx.Done():
			return Digest{}, ctx.Err()
		}
		if res.err != nil {
			return Digest{}, res.err
		}
		for i := 0; i < len(res.level1); i += ds {
			h.addHash(1, res.level1[i:i+ds])
		}
		for i := 0; i < len(res.leaves); i += ds {
			h.addHash(0, res.leaves[i:i+ds])
		}
	}
	if err := ctx.Err(); err != nil {
		return Digest{}, err
	}
	h.size = size
	return h.Sum(), nil
}

// chunkWorker holds one worker's buffers, reused across chunks.
type chunkWorker struct {
	alg   Algorithm
	buf   []byte
	group []byte // hashes of the data blocks of the current level-1 subtree
	tail  []byte // last partial data block, zero-padded
}

func newChunkWorker(alg Algorithm) *chunkWorker {
	return &chunkWorker{
		alg:   alg,
		buf:   make([]byte, chunkReadSize),
		group: make([]byte, BlockSize),
		tail:  make([]byte, BlockSize),
	}
}

// hash hashes n bytes at off. off is a multiple of chunkSize; n is
// chunkSize except for the last chunk.
func (w *chunkWorker) hash(r io.ReaderAt, off, n int64) chunkResult {
	ds := w.alg.Size()
	subtree := int64(w.alg.fanout()) * BlockSize
	res := chunkResult{level1: make([]byte, 0, (n/subtree)*int64(ds))}
	g := 0 // bytes of w.group in use
	for done := int64(0); done < n; {
		k := min(int64(len(w.buf)), n-done)
		p := w.buf[:k]
		if err := readFullAt(r, p, off+done); err != nil {
			return chunkResult{err: err}
		}
		done += k
		for len(p) > 0 {
			block := p
			if len(block) >= BlockSize {
				block = block[:BlockSize]
			} else {
				clear(w.tail)
				copy(w.tail, block)
				block = w.tail
			}
			w.alg.hashBlock(w.group[g:g+ds], block)
			g += ds
			p = p[min(len(p), BlockSize):]
			if g == BlockSize {
				var sum [maxDigestSize]byte
				w.alg.hashBlock(sum[:ds], w.group)
				res.level1 = append(res.level1, sum[:ds]...)
				g = 0
			}
		}
	}
	if g > 0 {
		res.leaves = append([]byte(nil), w.group[:g]...)
	}
	return res
}

// unwrapPathError strips the op and path from an *fs.PathError, since our
// errors name the path themselves.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// typeName names a non-regular file type for error messages.
func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return "irregular file"
}
