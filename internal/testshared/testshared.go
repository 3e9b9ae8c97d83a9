// Package testshared finds the project's shared/ directory (design notes and
// golden test vectors, e.g. vectors/composefs). It is not part of the
// repository: it sits beside the checkout (CI copies it next to its fresh
// clone; on a development machine it is next to the main checkout, above
// the worktrees), so tests look for it rather than hard-code a path.
package testshared

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EnvDir names the environment variable that, when set, is the shared
// directory itself.
const EnvDir = "TWINROOT_SHARED"

// ErrNotFound is returned when no shared directory is found.
var ErrNotFound = errors.New("testshared: no shared/vectors beside the checkout (set " + EnvDir + ")")

// Dir returns $TWINROOT_SHARED, or else the first directory named shared
// that holds a vectors/ directory and sits beside the working directory or
// one of its ancestors (go test runs in the package directory).
func Dir() (string, error) {
	if d := os.Getenv(EnvDir); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testshared: %w", err)
	}
	return find(wd)
}

// find looks for <ancestor>/shared/vectors from dir upwards.
func find(dir string) (string, error) {
	for {
		cand := filepath.Join(dir, "shared")
		if fi, err := os.Stat(filepath.Join(cand, "vectors")); err == nil && fi.IsDir() {
			return cand, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNotFound
		}
		dir = parent
	}
}

// Path returns the path of elem inside the shared directory, e.g.
// Path("vectors", "composefs"). When there is no shared directory it
// returns a path under a directory that does not exist, so that a test
// reading it fails to open (and skips or fails as it sees fit) and the
// path it names says what was looked for.
func Path(elem ...string) string {
	d, err := Dir()
	if err != nil {
		d = filepath.Join(string(filepath.Separator), "nonexistent", "shared")
	}
	return filepath.Join(append([]string{d}, elem...)...)
}
