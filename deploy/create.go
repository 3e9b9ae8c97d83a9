package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/internal/atomicfile"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// CreateOptions say what to deploy.
type CreateOptions struct {
	Image     verity.Digest
	Origin    Origin
	Kargs     []string
	MergeFrom string // id of the deployment whose /etc holds local changes ("" = the image's /etc as is)
}

// Create makes a new deployment of opts.Image: its root "deploy-<id>"
// first, then the deployment built in a store temp directory (etc/ as the
// image's /etc, or merged with MergeFrom's; deployment.json; .lock), one
// syncfs, the rename into deployments/ and an fsync of it. After a crash
// at any point the deployment is complete or absent (and GC drops a root
// left alone). A merge that cannot be done fails with ErrEtcMerge naming
// the path, an image without /etc with ErrNoEtc naming the image; nothing
// is left behind either way.
//
// When the persistent /var (<sysroot>/var) is missing or empty, Create
// then seeds it from the image's /var (see SeedVar); an existing /var is
// never touched. An error there (or in the last fsync of deployments/) is
// returned together with the deployment, which then exists. Takes
// deploy.lock.
func (m *Manager) Create(ctx context.Context, opts CreateOptions) (Deployment, error) {
	if opts.Image.IsZero() {
		return Deployment{}, fmt.Errorf("deploy: create: no image")
	}
	for _, k := range opts.Kargs {
		if err := checkKarg(k); err != nil {
			return Deployment{}, err
		}
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return Deployment{}, err
	}
	defer unlock()
	if err := m.ensureDirs(); err != nil {
		return Deployment{}, err
	}
	var from Deployment
	if opts.MergeFrom != "" {
		if from, err = m.Get(ctx, opts.MergeFrom); err != nil {
			return Deployment{}, fmt.Errorf("deploy: merge from: %w", err)
		}
	}
	newFS, err := m.store.OpenImageFS(ctx, opts.Image)
	if err != nil {
		return Deployment{}, fmt.Errorf("deploy: image %s: %w", opts.Image, err)
	}
	defer newFS.Close()
	var baseFS *objstore.ImageFS
	if opts.MergeFrom != "" {
		if baseFS, err = m.store.OpenImageFS(ctx, from.Image); err != nil {
			return Deployment{}, fmt.Errorf("deploy: image %s of deployment %s: %w", from.Image, from.ID, err)
		}
		defer baseFS.Close()
	}
	// Plan before anything is written, so a merge that cannot be done or an
	// image without /etc leaves nothing behind.
	var plan Plan
	if baseFS != nil {
		plan, err = Merge(baseFS, newFS, m.EtcDir(from.ID))
	} else {
		plan, err = Merge(nil, newFS, "")
	}
	if err != nil {
		return Deployment{}, fmt.Errorf("deploy: image %s: %w", opts.Image, err)
	}
	osr, err := readOSRelease(newFS)
	if err != nil {
		return Deployment{}, fmt.Errorf("deploy: image %s: %w", opts.Image, err)
	}
	id, err := m.newID(ctx, opts.Image)
	if err != nil {
		return Deployment{}, err
	}
	d := Deployment{ID: id, Image: opts.Image, Origin: opts.Origin, OSRelease: osr,
		Kargs: opts.Kargs, Created: time.Now().UTC(), MergedFrom: opts.MergeFrom, Conflicts: plan.Conflicts}

	root := rootPrefix + id
	if err := m.store.AddRoot(ctx, root, opts.Image); err != nil {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	m.crashPoint("create.rooted")
	done := false
	defer func() {
		if !done {
			if err := m.store.RemoveRoot(context.WithoutCancel(ctx), root); err != nil {
				m.log.Warn("dropping the root of a failed deployment", "root", root, "err", err)
			}
		}
	}()
	td, err := m.store.NewTempDir(ctx)
	if err != nil {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	defer td.Release()
	build := td.Path()
	if err := apply(ctx, plan, filepath.Join(build, dirEtc), applyOptions{crash: m.crash}); err != nil {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	m.crashPoint("create.etc")
	if err := m.writeRecord(build, d, false); err != nil {
		return Deployment{}, err
	}
	if err := createEmpty(filepath.Join(build, fileDepLock)); err != nil {
		return Deployment{}, err
	}
	if err := os.Chmod(build, 0o755); err != nil {
		return Deployment{}, fmt.Errorf("deploy: %w", err)
	}
	m.crashPoint("create.written")
	if err := syncfs(build); err != nil {
		return Deployment{}, err
	}
	m.crashPoint("create.synced")
	dst := m.dir(id)
	if err := unix.Renameat2(unix.AT_FDCWD, build, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		return Deployment{}, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	done = true
	m.crashPoint("create.renamed")
	if err := atomicfile.SyncDir(m.deploymentsDir()); err != nil {
		return d, fmt.Errorf("deploy: deployment %s: %w", id, err)
	}
	m.crashPoint("create.dir-synced")
	if m.sysroot != "" {
		if err := m.seedVar(ctx, newFS); err != nil {
			return d, err
		}
	}
	m.log.Info("deployment created", "id", id, "image", opts.Image.Hex(), "mergedFrom", opts.MergeFrom, "conflicts", len(d.Conflicts))
	return d, nil
}

// checkKarg refuses a kernel argument that would break the boot entry's
// options line: empty, holding a control character (a newline would end
// the line), or blanks outside quotes (the kernel would split it in two,
// and boot refuses it when it writes the entry: refused here, before the
// deployment exists).
func checkKarg(k string) error {
	if k == "" {
		return fmt.Errorf("deploy: %w: empty kernel argument", ErrBadKarg)
	}
	for _, c := range k {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("deploy: %w %q: control character", ErrBadKarg, k)
		}
	}
	if strings.ContainsAny(k, " \t") && !strings.Contains(k, `"`) {
		return fmt.Errorf("deploy: %w %q: blanks outside quotes", ErrBadKarg, k)
	}
	return nil
}

// newID picks "<12 hex>.<n>" with n the lowest integer not used by a
// deployment, a pending removal or a root. Called under deploy.lock.
func (m *Manager) newID(ctx context.Context, img verity.Digest) (string, error) {
	prefix := img.Hex()[:12]
	used := map[string]bool{}
	ents, err := os.ReadDir(m.deploymentsDir())
	if err != nil {
		return "", fmt.Errorf("deploy: %w", err)
	}
	for _, e := range ents {
		used[e.Name()] = true
	}
	rents, err := os.ReadDir(filepath.Join(m.store.Root(), dirRemoved))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("deploy: %w", err)
	}
	for _, e := range rents {
		if id, ok := removedID(e.Name()); ok {
			used[id] = true
		}
	}
	roots, err := m.store.Roots(ctx)
	if err != nil {
		return "", fmt.Errorf("deploy: %w", err)
	}
	for r := range roots {
		if id, ok := strings.CutPrefix(r, rootPrefix); ok {
			used[id] = true
		}
	}
	for n := 0; ; n++ {
		id := prefix + "." + strconv.Itoa(n)
		if !used[id] {
			return id, nil
		}
	}
}

// removedID parses "deploy-<id>.<suffix>", an entry of removed/.
func removedID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, rootPrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

func createEmpty(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return f.Close()
}

// syncfs makes everything written to the filesystem holding p durable.
func syncfs(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("deploy: syncfs: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("deploy: syncfs %s: %w", p, err)
	}
	return nil
}

// readOSRelease reads the image's /usr/lib/os-release, else
// /etc/os-release; an image with neither has none (nil, no error).
func readOSRelease(fsys fs.FS) (map[string]string, error) {
	for _, p := range []string{"usr/lib/os-release", "etc/os-release"} {
		b, err := fs.ReadFile(fsys, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return ParseOSRelease(b), nil
	}
	return nil, nil
}

// ParseOSRelease parses os-release(5): KEY=value lines, values optionally
// in single or double quotes (with backslash escapes in double quotes);
// comments, blank and malformed lines are skipped.
func ParseOSRelease(b []byte) map[string]string {
	out := map[string]string{}
	// Not bufio.Scanner: a line over its 64 KiB token would end the scan
	// and hide every line after it.
	for raw := range bytes.SplitSeq(b, []byte("\n")) {
		line := strings.TrimSpace(string(raw))
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\"'") {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
			q := v[0]
			v = v[1 : len(v)-1]
			if q == '"' {
				var sb strings.Builder
				for i := 0; i < len(v); i++ {
					if v[i] == '\\' && i+1 < len(v) {
						i++
					}
					sb.WriteByte(v[i])
				}
				v = sb.String()
			}
		}
		out[k] = v
	}
	return out
}
