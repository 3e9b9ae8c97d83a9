package erofs

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/internal/testshared"
)

// upstreamVectorDir is where the shared golden vectors live: shared/ beside
// the checkout (see internal/testshared).
func upstreamVectorDir() string {
	return testshared.Path("vectors", "composefs")
}

const localVectorDir = "testdata/vectors"

// lenientVectors are the upstream inputs the reference parses without
// CFS_PARSE_STRICT.
var lenientVectors = map[string]bool{
	"no-newline.dump":                      true,
	"longlink.dump":                        true,
	"honggfuzz-longlink-unterminated.dump": true,
}

type vector struct {
	name     string // input file name
	dir      string
	sha256   string // "" when the reference rejects the input
	version  int    // -1: default options
	expected string // path of the expected image (.cfs.gz), if any
}

// findVectors lists the vectors of dir: every NAME with a NAME.sha256, and
// every should-fail-* input.
func findVectors(t testing.TB, dir string) []vector {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".sha256"):
			in := strings.TrimSuffix(name, ".sha256")
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			v := vector{name: in, dir: dir, version: -1}
			s := strings.TrimSpace(string(b))
			if len(s) == 64 {
				v.sha256 = s
			} else if !strings.Contains(s, "rejects") {
				t.Fatalf("%s: unexpected content %q", name, s)
			}
			if vb, err := os.ReadFile(filepath.Join(dir, in+".version")); err == nil {
				v.version, err = strconv.Atoi(strings.TrimSpace(string(vb)))
				if err != nil {
					t.Fatalf("%s.version: %v", in, err)
				}
			}
			cfs := filepath.Join(dir, strings.TrimSuffix(strings.TrimSuffix(in, ".gz"), ".dump")+".cfs.gz")
			if _, err := os.Stat(cfs); err == nil {
				v.expected = cfs
			}
			vs = append(vs, v)
		case strings.HasPrefix(name, "should-fail-"):
			vs = append(vs, vector{name: name, dir: dir, version: -1})
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].name < vs[j].name })
	return vs
}

func readMaybeGzip(t testing.TB, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(path, ".gz") {
		return b
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (v vector) options() WriteOptions {
	if v.version < 0 {
		return WriteOptions{}
	}
	return ExactVersion(v.version)
}

// buildImage parses and writes a vector's input the way the reference
// command line does.
func buildVectorImage(input []byte, v vector) ([]byte, error) {
	// Like the reference's tests: CFS_PARSE_STRICT for the images, except
	// for three inputs; the should-fail inputs without it.
	strict := !lenientVectors[v.name] && !strings.HasPrefix(v.name, "should-fail-")
	root, err := ParseDump(bytes.NewReader(input), ParseOptions{Strict: strict})
	if err != nil {
		return nil, err
	}
	var img bytes.Buffer
	if err := Write(&img, root, v.options()); err != nil {
		return nil, err
	}
	return img.Bytes(), nil
}

func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// TestVectors checks the writer against every golden vector: the image's
// SHA-256 (and bytes, where given), fsck.erofs on the image, rejection of
// what the reference rejects, and the dumpfile printer's round trip.
func TestVectors(t *testing.T) {
	fsck, err := exec.LookPath("fsck.erofs")
	if err != nil {
		t.Fatalf("fsck.erofs not found (Debian package erofs-utils, in the Makefile's DEB_PACKAGES): %v", err)
	}
	dirs := []string{localVectorDir}
	if _, err := os.Stat(upstreamVectorDir()); err == nil {
		dirs = append(dirs, upstreamVectorDir())
	} else {
		t.Logf("upstream vectors skipped: %s: %v", upstreamVectorDir(), err)
	}
	tmp := t.TempDir()
	for _, dir := range dirs {
		vs := findVectors(t, dir)
		if len(vs) == 0 {
			t.Fatalf("no vectors in %s", dir)
		}
		for _, v := range vs {
			if dir != localVectorDir {
				if _, err := os.Stat(filepath.Join(localVectorDir, v.name)); err == nil {
					continue // tested from the local copy
				}
			}
			t.Run(filepath.Base(dir)+"/"+v.name, func(t *testing.T) {
				input := readMaybeGzip(t, filepath.Join(v.dir, v.name))
				img, err := buildVectorImage(input, v)
				if v.sha256 == "" {
					if err == nil {
						t.Fatalf("accepted an input the reference rejects")
					}
					if !errors.Is(err, ErrBadDump) && !errors.Is(err, ErrBadTree) {
						t.Fatalf("error does not wrap ErrBadDump or ErrBadTree: %v", err)
					}
					t.Logf("rejected: %v", err)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(img)
				got := hex.EncodeToString(sum[:])
				if v.expected != "" {
					want := readMaybeGzip(t, v.expected)
					if off := firstDiff(img, want); off >= 0 {
						t.Errorf("image differs from %s at offset %d (0x%x); sizes %d/%d",
							filepath.Base(v.expected), off, off, len(img), len(want))
					}
				}
				if got != v.sha256 {
					t.Errorf("image sha256 %s, want %s", got, v.sha256)
					out := filepath.Join(os.TempDir(), "twinroot-vector-"+v.name+".cfs")
					if os.WriteFile(out, img, 0o644) == nil {
						t.Logf("image kept at %s", out)
					}
				}
				path := filepath.Join(tmp, v.name+".cfs")
				if err := os.WriteFile(path, img, 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(fsck, path).CombinedOutput(); err != nil {
					t.Errorf("fsck.erofs: %v\n%s", err, out)
				}
				checkRoundTrip(t, input, v)
			})
		}
	}
}

// checkRoundTrip checks print∘parse: the identity on canonical inputs, and
// idempotent (print(parse(print(parse(x)))) == print(parse(x))) on all. The
// printed form must also give the same image.
func checkRoundTrip(t *testing.T, input []byte, v vector) {
	strict := ParseOptions{Strict: !lenientVectors[v.name]}
	root, err := ParseDump(bytes.NewReader(input), strict)
	if err != nil {
		t.Fatal(err)
	}
	var p1 bytes.Buffer
	if err := WriteDump(&p1, root); err != nil {
		t.Fatal(err)
	}
	canonical := bytes.Equal(p1.Bytes(), input)
	if strings.HasPrefix(v.name, "gen-") && !canonical {
		off := firstDiff(p1.Bytes(), input)
		line := bytes.Count(input[:min(off, len(input))], []byte("\n")) + 1
		t.Logf("print(parse(x)) != x: first difference at line %d", line)
	}
	root2, err := ParseDump(bytes.NewReader(p1.Bytes()), ParseOptions{Strict: true})
	if err != nil {
		t.Fatalf("printed dump does not parse: %v", err)
	}
	var p2 bytes.Buffer
	if err := WriteDump(&p2, root2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p1.Bytes(), p2.Bytes()) {
		off := firstDiff(p1.Bytes(), p2.Bytes())
		t.Errorf("print∘parse not idempotent, first difference at byte %d", off)
	}
	var i1, i2 bytes.Buffer
	if err := Write(&i1, root, v.options()); err != nil {
		t.Fatal(err)
	}
	if err := Write(&i2, root2, v.options()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(i1.Bytes(), i2.Bytes()) {
		t.Errorf("image of the printed dump differs (offset %d)", firstDiff(i1.Bytes(), i2.Bytes()))
	}
	t.Logf("%s: canonical=%v", v.name, canonical)
}

// TestVectorsCopied checks that the gen-* vectors are in testdata so a clone
// tests them without the shared directory.
func TestVectorsCopied(t *testing.T) {
	up := upstreamVectorDir()
	if _, err := os.Stat(up); err != nil {
		t.Skipf("upstream vectors absent: %v", err)
	}
	ups, _ := filepath.Glob(filepath.Join(up, "gen-*"))
	for _, u := range ups {
		want, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(localVectorDir, filepath.Base(u)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: local copy missing or different (%v)", filepath.Base(u), err)
		}
	}
}
