//go:build ignore

// deploy_tool is bench/deploy.sh's helper, run with `go run` (or built):
//
//	deploy_tool deploy SYSROOT IMAGE [FROM]     deploy.Create; prints "<id> <seconds>"
//	deploy_tool remove SYSROOT ID               deploy.Remove
//	deploy_tool merge SYSROOT BASE NEW ETC OUT [syncfs|fsync|none]
//	                                            deploy.Merge + Apply into OUT, then one
//	                                            syncfs (default), an fsync of every file
//	                                            and directory written, or nothing; prints
//	                                            "<seconds> <actions> <conflicts>"
//	deploy_tool changes ETC                     make 50 local changes of every kind in ETC
//
// IMAGE, BASE and NEW are composefs digests (hex) of images in
// SYSROOT/twinroot. Times are wall seconds of the deploy work alone
// (process start and store open excluded).
package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinroot/twinroot/deploy"
	"github.com/twinroot/twinroot/objstore"
	"github.com/twinroot/twinroot/verity"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "deploy_tool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: deploy|merge|changes ...")
	}
	ctx := context.Background()
	switch args[0] {
	case "changes":
		return changes(args[1])
	case "deploy":
		s, err := objstore.Open(ctx, filepath.Join(args[1], "twinroot"), objstore.Options{})
		if err != nil {
			return err
		}
		defer s.Close()
		d, err := verity.ParseDigest(args[2])
		if err != nil {
			return err
		}
		opts := deploy.CreateOptions{Image: d}
		if len(args) > 3 {
			opts.MergeFrom = args[3]
		}
		m := deploy.New(s, args[1], nil)
		start := time.Now()
		dep, err := m.Create(ctx, opts)
		if err != nil {
			return err
		}
		fmt.Printf("%s %.6f\n", dep.ID, time.Since(start).Seconds())
	case "remove":
		s, err := objstore.Open(ctx, filepath.Join(args[1], "twinroot"), objstore.Options{})
		if err != nil {
			return err
		}
		defer s.Close()
		return deploy.New(s, args[1], nil).Remove(ctx, args[2])
	case "merge":
		if len(args) < 6 {
			return fmt.Errorf("usage: merge SYSROOT BASE NEW ETC OUT [fsync]")
		}
		s, err := objstore.Open(ctx, filepath.Join(args[1], "twinroot"), objstore.Options{})
		if err != nil {
			return err
		}
		defer s.Close()
		var fss [2]*objstore.ImageFS
		for i, h := range args[2:4] {
			d, err := verity.ParseDigest(h)
			if err != nil {
				return err
			}
			if fss[i], err = s.OpenImageFS(ctx, d); err != nil {
				return err
			}
			defer fss[i].Close()
		}
		start := time.Now()
		plan, err := deploy.Merge(fss[0], fss[1], args[4])
		if err != nil {
			return err
		}
		if err := deploy.Apply(ctx, plan, args[5]); err != nil {
			return err
		}
		mode := "syncfs"
		if len(args) > 6 {
			mode = args[6]
		}
		switch mode {
		case "syncfs":
			err = syncfs(args[5])
		case "fsync":
			err = fsyncTree(args[5])
		case "none":
		default:
			err = fmt.Errorf("unknown sync mode %q", mode)
		}
		if err != nil {
			return err
		}
		fmt.Printf("%.6f %d %d\n", time.Since(start).Seconds(), len(plan.Actions), len(plan.Conflicts))
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	return nil
}

func syncfs(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// fsyncTree fsyncs every regular file and directory under dir (what a
// per-file fsync policy costs).
func fsyncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !de.Type().IsRegular() && !de.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
}

// changes makes 50 local changes of every kind the merge handles in an
// /etc, choosing files that exist in a Debian minbase /etc (whichever
// exist: regular files sorted by name, taken in turn).
func changes(etc string) error {
	var files, links, dirs []string
	err := filepath.WalkDir(etc, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(etc, p)
		switch {
		case rel == ".":
		case de.Type().IsRegular():
			files = append(files, rel)
		case de.Type()&fs.ModeSymlink != 0:
			links = append(links, rel)
		case de.IsDir():
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	sort.Strings(links)
	next := 0
	file := func() string {
		for next < len(files) {
			f := files[next]
			next++
			if _, err := os.Lstat(filepath.Join(etc, f)); err == nil {
				return filepath.Join(etc, f)
			}
		}
		return ""
	}
	n := 0
	do := func(err error) error {
		if err == nil {
			n++
		}
		return err
	}
	for i := range 12 { // modified
		p := file()
		if err := do(os.WriteFile(p, []byte(fmt.Sprintf("# changed locally %d\n", i)), 0o644)); err != nil {
			return err
		}
	}
	for i := range 10 { // added
		p := filepath.Join(etc, fmt.Sprintf("local-%d.conf", i))
		if i%3 == 0 {
			p = filepath.Join(etc, "local.d", fmt.Sprintf("sub-%d", i), "x.conf")
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := do(os.WriteFile(p, []byte(strings.Repeat("local ", 20*i+1)), 0o644)); err != nil {
			return err
		}
	}
	for range 5 { // deleted
		if err := do(os.Remove(file())); err != nil {
			return err
		}
	}
	for range 5 { // mode
		if err := do(os.Chmod(file(), 0o600)); err != nil {
			return err
		}
	}
	for i := range 5 { // owner
		if err := do(os.Lchown(file(), 1000+i, 1000+i)); err != nil {
			return err
		}
	}
	for i := range 5 { // xattrs, security.selinux among them
		name := "user.local"
		if i%2 == 0 {
			name = "security.selinux"
		}
		if err := do(unix.Lsetxattr(file(), name, []byte("system_u:object_r:etc_t:s0"), 0)); err != nil {
			return err
		}
	}
	for i := range 2 { // symlink replaced by a file
		if i < len(links) {
			p := filepath.Join(etc, links[i])
			os.Remove(p)
			if err := do(os.WriteFile(p, []byte("was a symlink\n"), 0o644)); err != nil {
				return err
			}
		}
	}
	for range 2 { // file replaced by a symlink
		p := file()
		os.Remove(p)
		if err := do(os.Symlink("/dev/null", p)); err != nil {
			return err
		}
	}
	for range 2 { // file replaced by a directory
		p := file()
		os.Remove(p)
		if err := do(os.MkdirAll(filepath.Join(p, "inner"), 0o755)); err != nil {
			return err
		}
	}
	// Hardlink and fifo.
	p := file()
	if err := do(os.Link(p, filepath.Join(etc, "local-hardlink"))); err != nil {
		return err
	}
	if err := do(unix.Mkfifo(filepath.Join(etc, "local-fifo"), 0o600)); err != nil {
		return err
	}
	fmt.Println(n, "changes")
	return nil
}
