package testshared

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFind(t *testing.T) {
	root := t.TempDir()
	// root/a/shared/vectors is beside root/a/repo; root/shared has no vectors.
	for _, d := range []string{"a/shared/vectors", "a/repo/pkg/sub", "shared", "b/repo"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "a/repo/shared"), nil, 0o644); err != nil {
		t.Fatal(err) // a file named shared is not the directory
	}
	tests := []struct {
		from    string
		want    string
		wantErr error
	}{
		{"a/repo/pkg/sub", "a/shared", nil},
		{"a/repo", "a/shared", nil},
		{"a", "a/shared", nil},
		{"b/repo", "", ErrNotFound},
	}
	for _, tt := range tests {
		got, err := find(filepath.Join(root, tt.from))
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("find(%s): error %v, want %v", tt.from, err, tt.wantErr)
			continue
		}
		if tt.wantErr == nil && got != filepath.Join(root, tt.want) {
			t.Errorf("find(%s) = %s, want %s", tt.from, got, filepath.Join(root, tt.want))
		}
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv(EnvDir, "/some/where")
	if d, err := Dir(); err != nil || d != "/some/where" {
		t.Errorf("Dir() = %q, %v", d, err)
	}
	if p := Path("vectors", "x"); p != "/some/where/vectors/x" {
		t.Errorf("Path = %q", p)
	}
}

func TestPathNotFound(t *testing.T) {
	if _, err := os.Stat("/shared/vectors"); err == nil {
		t.Skip("/shared/vectors exists on this machine")
	}
	t.Setenv(EnvDir, "")
	t.Chdir("/")
	if d, err := Dir(); !errors.Is(err, ErrNotFound) {
		t.Errorf("Dir() = %q, %v; want ErrNotFound", d, err)
	}
	if p, want := Path("vectors", "composefs"), "/nonexistent/shared/vectors/composefs"; p != want {
		t.Errorf("Path = %q, want %q", p, want)
	}
}
