package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/twinroot/twinroot/erofs"
	"github.com/twinroot/twinroot/verity"
)

// newImageCmd is the "image" verb group: create, dump, digest, mount, umount.
func newImageCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Create, inspect and mount composefs images",
		Long: `The image verbs work on composefs images: EROFS metadata images whose
regular files point, by fs-verity digest, into an object directory. They are
byte-compatible with mkcomposefs and composefs-info.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newImageCreateCmd(a), newImageDumpCmd(a), newImageDigestCmd(a),
		newImageMountCmd(a), newImageUmountCmd(a))
	return cmd
}

func newImageCreateCmd(a *app) *cobra.Command {
	var (
		fromFile    bool
		digestStore string
		printDigest bool
		minVersion  int
		maxVersion  int
	)
	cmd := &cobra.Command{
		Use:   "create [--from-file] [--digest-store DIR] [--print-digest] [--min-version N] [--max-version N] SRC OUT",
		Short: "Create a composefs image from a directory or a dumpfile",
		Long: `Create the composefs image OUT from SRC, as mkcomposefs does.

SRC is a directory (symlinks are not followed; every xattr, owner, mode and
nanosecond mtime is kept; files of 1..64 bytes are stored in the image, larger
ones are referenced by their fs-verity digest, computed in parallel), or with
--from-file a composefs dumpfile (composefs-dump(5)); "-" reads the dumpfile
from stdin. Unlike mkcomposefs, hardlinks in a directory stay hardlinks.

--digest-store DIR copies the content of every referenced file into DIR at
its digest path (xx/rest), reflinked where the filesystem can, with fs-verity
enabled where it can; present objects are kept. Not with --from-file.

OUT "-" writes the image to stdout; otherwise OUT is written under a temporary
name, synced and renamed into place. --print-digest prints the image's
fs-verity digest (the composefs digest) in hex on stdout.

--min-version/--max-version bound the composefs format version (0 or 1,
defaults 0 and 1); version 1 is used only when the tree has whiteouts.`,
		Args: usageArgs(cobra.ExactArgs(2)),
	}
	f := cmd.Flags()
	f.BoolVar(&fromFile, "from-file", false, "SRC is a dumpfile, not a directory")
	f.StringVar(&digestStore, "digest-store", "", "copy referenced file contents into this object directory")
	f.BoolVar(&printDigest, "print-digest", false, "print the image's fs-verity digest")
	f.IntVar(&minVersion, "min-version", 0, "lowest composefs format version to write")
	f.IntVar(&maxVersion, "max-version", erofs.DefaultMaxVersion, "highest composefs format version to write")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		src, out := args[0], args[1]
		if fromFile && digestStore != "" {
			return &exitError{code: exitUsage, err: fmt.Errorf("--digest-store cannot be used with --from-file")}
		}
		if minVersion < 0 || maxVersion < 0 || minVersion > erofs.MaxFormatVersion || maxVersion > erofs.MaxFormatVersion {
			return &exitError{code: exitUsage, err: fmt.Errorf("format versions must be 0..%d", erofs.MaxFormatVersion)}
		}
		if out == "-" && printDigest {
			return &exitError{code: exitUsage, err: fmt.Errorf("--print-digest cannot be used with OUT -")}
		}
		if !fromFile && src == "-" {
			return &exitError{code: exitUsage, err: fmt.Errorf("SRC - (stdin) needs --from-file")}
		}
		root, err := loadTree(cmd.Context(), a, src, fromFile, digestStore)
		if err != nil {
			return err
		}
		opts := erofs.WriteOptions{MinVersion: minVersion, MaxVersion: maxVersion}
		if maxVersion == 0 {
			opts.MaxVersion = -1 // explicit 0: never bump (WriteOptions' 0 means the default)
		}
		d, err := writeImage(a, out, root, opts)
		if err != nil {
			return err
		}
		if printDigest {
			fmt.Fprintln(a.stdout, d.Hex())
		}
		return nil
	}
	return cmd
}

// loadTree reads the source tree of image create.
func loadTree(ctx context.Context, a *app, src string, fromFile bool, store string) (*erofs.Node, error) {
	if !fromFile {
		root, err := erofs.FromDir(ctx, src, erofs.FromDirOptions{DigestStore: store, Logger: a.log})
		if err != nil {
			return nil, fmt.Errorf("image create: %w", err)
		}
		return root, nil
	}
	var r io.Reader = os.Stdin
	if src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return nil, fmt.Errorf("image create: %w", err)
		}
		defer f.Close()
		r = f
	}
	root, err := erofs.ParseDump(bufio.NewReaderSize(r, 64<<10), erofs.ParseOptions{Strict: os.Getenv("CFS_PARSE_STRICT") != ""})
	if err != nil {
		return nil, fmt.Errorf("image create: %s: %w", src, err)
	}
	return root, nil
}

// writeImage writes the image of root to out ("-" for stdout; a path is
// written to a temp file that is synced and renamed into place) and
// returns its fs-verity digest, computed while writing.
func writeImage(a *app, out string, root *erofs.Node, opts erofs.WriteOptions) (verity.Digest, error) {
	h := verity.New(verity.SHA256)
	if out == "-" {
		bw := bufio.NewWriterSize(a.stdout, 64<<10)
		if err := erofs.Write(io.MultiWriter(bw, h), root, opts); err != nil {
			return verity.Digest{}, fmt.Errorf("image create: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return verity.Digest{}, fmt.Errorf("image create: writing stdout: %w", err)
		}
		return h.Sum(), nil
	}
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp")
	if err != nil {
		return verity.Digest{}, fmt.Errorf("image create: %w", err)
	}
	fail := func(err error) (verity.Digest, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return verity.Digest{}, fmt.Errorf("image create: %s: %w", out, err)
	}
	bw := bufio.NewWriterSize(tmp, 64<<10)
	if err := erofs.Write(io.MultiWriter(bw, h), root, opts); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		os.Remove(tmp.Name())
		return verity.Digest{}, fmt.Errorf("image create: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return verity.Digest{}, fmt.Errorf("image create: syncing %s: %w", dir, err)
		}
	}
	return h.Sum(), nil
}

func newImageDumpCmd(a *app) *cobra.Command {
	var exact bool
	cmd := &cobra.Command{
		Use:   "dump [--exact-hardlinks] IMAGE",
		Short: "Print a composefs image as a dumpfile",
		Long: `Print the tree stored in the composefs image IMAGE as a composefs dumpfile
(composefs-dump(5)), byte for byte as "composefs-info dump" prints it: what the
writer added (overlay xattrs, escapes, whiteout stubs) is undone.

A hardlinked file is printed in full under its first name in depth-first
order, and as a hardlink ("@" mode) under the others. With --exact-hardlinks
the full entry is the name the image stores the inode under instead, so that
"image create --from-file" of the output gives the same image back, byte for
byte.`,
		Args: usageArgs(cobra.ExactArgs(1)),
	}
	cmd.Flags().BoolVar(&exact, "exact-hardlinks", false, "name hardlinks as the image stores them (create gives the image back)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		img, err := erofs.OpenFile(args[0])
		if err != nil {
			return fmt.Errorf("image dump: %w", err)
		}
		defer img.Close()
		root, err := img.ReadTree(erofs.TreeOptions{WriterPrimaries: exact})
		if err != nil {
			return fmt.Errorf("image dump: %s: %w", args[0], err)
		}
		bw := bufio.NewWriterSize(a.stdout, 1<<20)
		if err := erofs.WriteDump(bw, root); err != nil {
			return fmt.Errorf("image dump: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("image dump: writing output: %w", err)
		}
		return nil
	}
	return cmd
}

func newImageDigestCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "digest IMAGE",
		Short: "Print the composefs digest of an image",
		Long: `Print the composefs digest of IMAGE: the fs-verity SHA-256 digest of the image
file, in hex, as "mkcomposefs --print-digest" prints it and the composefs=
kernel argument expects. The image is checked to be a composefs image first.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := erofs.ImageDigest(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("image digest: %w", err)
			}
			fmt.Fprintln(a.stdout, d.Hex())
			return nil
		},
	}
}

func newImageMountCmd(a *app) *cobra.Command {
	var verityFlag string
	cmd := &cobra.Command{
		Use:   "mount [--verity auto|require|on|off] IMAGE OBJECTS MNT",
		Short: "Mount a composefs image read-only",
		Long: `Mount the composefs image IMAGE read-only on MNT: the EROFS image is mounted
privately and overlayfs serves file contents from the object directory
OBJECTS (metacopy=on, redirect_dir=on, OBJECTS as data-only layer).

--verity require: every file's object must have fs-verity with the digest
recorded in the image, or opening it fails with EIO. on: digests are checked
where the object has fs-verity. off: nothing is checked. auto (default):
require when the objects' filesystem supports fs-verity, else off with a
warning. Needs root.`,
		Args: usageArgs(cobra.ExactArgs(3)),
	}
	cmd.Flags().StringVar(&verityFlag, "verity", "auto", "fs-verity checking: auto, require, on or off")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		mode, err := erofs.ParseVerityMode(verityFlag)
		if err != nil {
			return &exitError{code: exitUsage, err: fmt.Errorf("--verity: %w", err)}
		}
		if err := erofs.Mount(cmd.Context(), args[0], args[1], args[2], erofs.MountOptions{Verity: mode, Logger: a.log}); err != nil {
			return fmt.Errorf("image mount: %w", err)
		}
		return nil
	}
	return cmd
}

func newImageUmountCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "umount MNT",
		Short: "Unmount a composefs image",
		Long:  `Unmount the composefs image mounted on MNT (and with it its private EROFS mount).`,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := erofs.Unmount(args[0]); err != nil {
				return fmt.Errorf("image umount: %w", err)
			}
			return nil
		},
	}
}
