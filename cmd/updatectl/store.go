package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

// newStoreCmd is the "store" verb group: the object store and its images.
func newStoreCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Manage the object store and its composefs images",
		Long: `The object store (SYSROOT/twinroot, or --store DIR) keeps every regular file once,
named by its fs-verity digest, and one directory per composefs image.`,
	}
	cmd.AddCommand(
		newStoreInitCmd(a),
		newStoreImportCmd(a),
		newStoreImagesCmd(a),
		newStoreRmCmd(a),
		newStoreGCCmd(a),
		newStoreFsckCmd(a),
		newStoreStatsCmd(a),
		newStoreDedupCmd(a),
	)
	return cmd
}

// openStore opens the store named by the global flags.
func (a *app) openStore(ctx context.Context, create bool) (*objstore.Store, error) {
	return objstore.Open(ctx, a.store(), objstore.Options{Logger: a.log, Create: create})
}

// withStore makes a cobra RunE that opens the store (creating it when
// create is set), runs fn with it and closes it again.
func (a *app) withStore(create bool, fn func(ctx context.Context, s *objstore.Store, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		s, err := a.openStore(ctx, create)
		if err != nil {
			return err
		}
		defer s.Close()
		return fn(ctx, s, args)
	}
}

func newStoreInitCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the object store (idempotent)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(true, func(ctx context.Context, s *objstore.Store, args []string) error {
			v := "no"
			if s.VeritySupported() {
				v = "yes"
			}
			fmt.Fprintf(a.stdout, "store %s (%s, fs-verity: %s)\n", s.Root(), s.Algorithm(), v)
			return nil
		}),
	}
}

func newStoreImportCmd(a *app) *cobra.Command {
	var workers int
	cmd := &cobra.Command{
		Use:   "import SRC",
		Short: "Import a directory tree as objects plus a committed composefs image",
		Long:  "Import reads every file of SRC once, stores it as an object and commits a composefs image of the tree. The last line of output is the image's composefs digest (64 hex).",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			p := newStoreProgress(a.stderr, "import")
			res, err := s.ImportDir(ctx, args[0], objstore.ImportOptions{Workers: workers, Progress: p.update})
			p.finish()
			if err != nil {
				return err
			}
			secs := res.Elapsed.Seconds()
			fmt.Fprintf(a.stderr, "imported %d files (%d new objects), %s in %.2fs (%.0f files/s, %.1f MB/s)\n",
				res.Files, res.Added, storeHumanBytes(res.Bytes), secs, float64(res.Files)/secs, float64(res.Bytes)/1e6/secs)
			fmt.Fprintln(a.stdout, res.Digest.Hex())
			return nil
		}),
	}
	cmd.Flags().IntVar(&workers, "workers", 0, "files walked and read at once (0: the larger of 16 and 2 per CPU)")
	return cmd
}

func newStoreImagesCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List committed images: digest, objects, bytes, source",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			imgs, err := s.Images(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				if imgs == nil {
					imgs = []objstore.ImageInfo{}
				}
				return storeWriteJSON(a.stdout, imgs)
			}
			for _, im := range imgs {
				fmt.Fprintf(a.stdout, "%s %d %d %s\n", im.Digest.Hex(), im.Objects, im.Bytes, im.Meta.Source)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newStoreRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rm DIGEST...",
		Short: "Remove images (deferred while an image is mounted)",
		Args:  usageArgs(cobra.MinimumNArgs(1)),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			failed := false
			for _, arg := range args {
				d, err := verity.ParseDigest(arg)
				if err != nil {
					fmt.Fprintf(a.stderr, "updatectl: %v\n", err)
					failed = true
					continue
				}
				err = s.Remove(ctx, d)
				var rooted *objstore.RootedError
				switch {
				case errors.Is(err, objstore.ErrInUse):
					fmt.Fprintf(a.stderr, "updatectl: %s: in use; removal deferred until it is unmounted (gc finishes it)\n", d.Hex())
				case errors.As(err, &rooted):
					fmt.Fprintf(a.stderr, "updatectl: %s: kept by %s; remove the deployment first\n", d.Hex(), rootOwners(rooted.Roots))
					failed = true
				case err != nil:
					fmt.Fprintf(a.stderr, "updatectl: %v\n", err)
					failed = true
				}
			}
			if failed {
				return &exitError{code: exitFailure, err: errors.New("some removals failed"), silent: true}
			}
			return nil
		}),
	}
}

// rootOwners names what keeps an image: "deployment ID" for deploy's
// "deploy-ID" roots, "root NAME" for any other.
func rootOwners(roots []string) string {
	var out []string
	for _, r := range roots {
		if id, ok := strings.CutPrefix(r, "deploy-"); ok {
			out = append(out, "deployment "+id)
		} else {
			out = append(out, "root "+r)
		}
	}
	return strings.Join(out, ", ")
}

func newStoreGCCmd(a *app) *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Delete objects no image references and finish pending removals",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			p := newStoreProgress(a.stderr, "gc")
			res, err := s.GC(ctx, objstore.GCOptions{DryRun: dry, Progress: p.update})
			p.finish()
			if err != nil {
				return err
			}
			verb := "deleted"
			if dry {
				verb = "would delete"
			}
			fmt.Fprintf(a.stdout, "%s %d objects (%s); %d removals finished, %d in use\n",
				verb, res.Objects, storeHumanBytes(res.Bytes), res.Images, res.InUse)
			return nil
		}),
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only count what would be deleted")
	return cmd
}

func newStoreFsckCmd(a *app) *cobra.Command {
	var repair, asJSON bool
	cmd := &cobra.Command{
		Use:   "fsck",
		Short: "Verify objects, images and link counts (exit 3 when problems are found)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			p := newStoreProgress(a.stderr, "fsck")
			res, err := s.Fsck(ctx, objstore.FsckOptions{Repair: repair, Progress: p.update})
			p.finish()
			if err != nil {
				return err
			}
			if asJSON {
				if err := storeWriteJSON(a.stdout, res); err != nil {
					return err
				}
			} else {
				for _, pr := range res.Problems {
					fmt.Fprintln(a.stdout, pr.String())
				}
				fmt.Fprintf(a.stdout, "%d objects, %d images, %d problems (%d garbage objects, %d shared with container storage, %d pending removals)\n",
					res.Objects, res.Images, len(res.Problems), res.Garbage, res.Shared, res.Pending)
			}
			if !res.Clean() {
				return &exitError{code: exitCheck, err: fmt.Errorf("store has %d problems", len(res.Problems)), silent: asJSON}
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "fix what can be fixed (relink, drop corrupt and stray files)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newStoreStatsCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Objects, bytes, bytes shared with container storage, per-image unique bytes",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			st, err := s.Stats(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				if st.Images == nil {
					st.Images = []objstore.ImageStats{}
				}
				return storeWriteJSON(a.stdout, st)
			}
			fmt.Fprintf(a.stdout, "objects: %d (%s)\n", st.Objects, storeHumanBytes(st.Bytes))
			fmt.Fprintf(a.stdout, "shared with container storage: %d (%s)\n", st.SharedObjects, storeHumanBytes(st.SharedBytes))
			fmt.Fprintf(a.stdout, "garbage: %d (%s)\n", st.GarbageObjects, storeHumanBytes(st.GarbageBytes))
			for _, im := range st.Images {
				fmt.Fprintf(a.stdout, "image %s: %d objects, %s, unique %s\n", im.Digest.Hex(), im.Objects, storeHumanBytes(im.Bytes), storeHumanBytes(im.UniqueBytes))
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newStoreDedupCmd(a *app) *cobra.Command {
	var o objstore.DedupOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "dedup",
		Short: "Share identical files with container storage (hardlink or reflink)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: a.withStore(false, func(ctx context.Context, s *objstore.Store, args []string) error {
			p := newStoreProgress(a.stderr, "dedup")
			o.Progress = p.update
			res, err := s.Dedup(ctx, o)
			p.finish()
			if err != nil {
				return err
			}
			if asJSON {
				return storeWriteJSON(a.stdout, res)
			}
			if res.Skipped != "" {
				fmt.Fprintf(a.stdout, "no sharing this time: %s\n", res.Skipped)
				return nil
			}
			fmt.Fprintf(a.stdout, "%d layers, %d files examined: %d hardlinked (%s), %d reflinked (%s), %d already shared, %d added to objects/, %d not shareable\n",
				res.Layers, res.Files, res.Hardlinked, storeHumanBytes(res.HardlinkedBytes), res.Reflinked, storeHumanBytes(res.ReflinkedBytes),
				res.AlreadyShared, res.Indexed, res.NotShareable)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.GraphRoot, "containers-root", "", "container storage graph root (default: from storage.conf, /var/lib/containers/storage)")
	f.StringVar(&o.RunRoot, "containers-runroot", "", "container storage run root (default: from storage.conf)")
	f.StringVar(&o.Driver, "containers-driver", "", "container storage driver (default: from storage.conf)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func storeWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func storeHumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// storeProgress turns objstore.Progress callbacks into a single updated
// line on a terminal, or an occasional plain line otherwise.
type storeProgress struct {
	w    io.Writer
	op   string
	tty  bool
	mu   sync.Mutex
	last time.Time
	line bool
}

func newStoreProgress(w io.Writer, op string) *storeProgress {
	p := &storeProgress{w: w, op: op, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *storeProgress) update(pr objstore.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	every := 2 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if time.Since(p.last) < every {
		return
	}
	p.last = time.Now()
	total := ""
	if pr.Total > 0 {
		total = fmt.Sprintf("/%d", pr.Total)
	}
	msg := fmt.Sprintf("%s: %d%s, %s", p.op, pr.Done, total, storeHumanBytes(pr.Bytes))
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", msg)
		p.line = true
	} else {
		fmt.Fprintln(p.w, msg)
	}
}

func (p *storeProgress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.line {
		fmt.Fprint(p.w, "\r\033[K")
		p.line = false
	}
}
