package objstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// Mount is an image mounted by MountImage. While it is open it holds a
// shared flock on the image's .lock; after Release (or when the process
// exits) the mount stays protected because removal also consults the
// mount table.
type Mount struct {
	Target string
	lock   *os.File
}

// MountImage mounts image d at target (erofs.Mount with the image's own
// directory as the data-only layer), holding a shared flock on
// images/<digest>/.lock from before the mount until Unmount or Release.
// VerityAuto becomes VerityRequire when the store has fs-verity, else
// VerityOff.
func (s *Store) MountImage(ctx context.Context, d verity.Digest, target string, opts erofs.MountOptions) (*Mount, error) {
	dir := s.ImageDir(d)
	f, err := s.holdImage(d)
	if err != nil {
		return nil, err
	}
	if opts.Verity == erofs.VerityAuto {
		// Decide here: erofs.Mount would probe by writing a file into the
		// image directory.
		opts.Verity = erofs.VerityOff
		if s.VeritySupported() {
			opts.Verity = erofs.VerityRequire
		}
	}
	if err := erofs.Mount(ctx, filepath.Join(dir, fileImage), dir, target, opts); err != nil {
		f.Close()
		return nil, fmt.Errorf("objstore: mounting image %s: %w", d, err)
	}
	return &Mount{Target: target, lock: f}, nil
}

// Unmount unmounts the image and drops its lock.
func (m *Mount) Unmount() error {
	err := erofs.Unmount(m.Target)
	m.Release()
	return err
}

// Release drops the lock but leaves the image mounted (a CLI process that
// exits after mounting); the mount table keeps the image in use.
func (m *Mount) Release() {
	if m.lock != nil {
		m.lock.Close()
		m.lock = nil
	}
}
