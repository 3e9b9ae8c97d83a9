package erofs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/twinroot/twinroot/internal/testshared"
)

// vectorDir holds the composefs golden vectors (see its README.md).
var vectorDir = testshared.Path("vectors", "composefs")

// gunzipFile returns the decompressed content of a .gz file.
func gunzipFile(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// genImages returns the gen-*.cfs.gz vector images.
func genImages(t testing.TB) []string {
	t.Helper()
	imgs, _ := filepath.Glob(filepath.Join(vectorDir, "gen-*.cfs.gz"))
	if len(imgs) == 0 {
		t.Skipf("no composefs vectors in %s", vectorDir)
	}
	return imgs
}

// unescapeDump decodes the \\ \n \r \t \xHH escapes of a dumpfile field.
func unescapeDump(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'x':
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// dumpSummary is the part of a dumpfile line this test checks
// independently of the dumpfile package code.
type dumpSummary struct {
	mode, payload, digest string
	size, content         string
	nxattrs               int
	// opaque: the source has an overlay opaque xattr, which a format
	// version 1 image overwrites on directories holding whiteouts.
	opaque bool
}

// summarizeDump maps each path of a dumpfile to its summary.
func summarizeDump(t *testing.T, dump []byte) map[string]dumpSummary {
	out := map[string]dumpSummary{}
	sc := bufio.NewScanner(bytes.NewReader(dump))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		f := strings.Split(sc.Text(), " ")
		if len(f) < 11 {
			t.Fatalf("short dump line %q", sc.Text())
		}
		p := unescapeDump(f[0])
		s := dumpSummary{mode: f[2]}
		if !strings.HasPrefix(f[2], "@") {
			s.size = f[1]
			if f[8] != "-" && strings.HasPrefix(f[2], "10") {
				s.payload = unescapeDump(f[8])
			}
			if f[10] != "-" {
				s.digest = f[10]
			}
			if f[9] != "-" && strings.HasPrefix(f[2], "10") {
				s.content = unescapeDump(f[9])
			}
			for _, x := range f[11:] {
				if x != "" {
					s.nxattrs++
				}
				if strings.HasPrefix(x, "trusted.overlay.opaque=") || strings.HasPrefix(x, "user.overlay.opaque=") {
					s.opaque = true
				}
			}
		}
		out[p] = s
	}
	return out
}

func summarizeTree(t *testing.T, root *Node) map[string]dumpSummary {
	out := map[string]dumpSummary{}
	err := root.Walk(func(n *Node) error {
		if n.Link != nil {
			out[n.Path()] = dumpSummary{mode: fmt.Sprintf("@%o", n.Link.Mode)}
			return nil
		}
		s := dumpSummary{mode: fmt.Sprintf("%o", n.Mode), size: fmt.Sprint(n.Size), payload: n.Payload, content: string(n.Content)}
		for _, x := range n.Xattrs {
			// Format version 1 marks directories holding whiteouts so.
			if (x.Name == "trusted.overlay.opaque" || x.Name == "user.overlay.opaque") && string(x.Value) == "x" {
				continue
			}
			s.nxattrs++
		}
		if n.IsDir() {
			s.size = ""
		}
		if n.Type() == ModeLink {
			s.payload = ""
		}
		if !n.Digest.IsZero() {
			s.digest = n.Digest.Hex()
		}
		out[n.Path()] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReaderVectors reads every generated reference image back and checks
// it against the dumpfile it was made from: same paths, modes, sizes,
// payloads, digests and numbers of xattrs.
func TestReaderVectors(t *testing.T) {
	for _, path := range genImages(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".cfs.gz")
		t.Run(name, func(t *testing.T) {
			data := gunzipFile(t, path)
			img, err := Open(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			root, err := img.Tree()
			if err != nil {
				t.Fatal(err)
			}
			want := summarizeDump(t, gunzipFile(t, filepath.Join(vectorDir, name+".dump.gz")))
			got := summarizeTree(t, root)
			for p, w := range want {
				g, ok := got[p]
				if !ok {
					t.Errorf("%q missing from the image tree", p)
					continue
				}
				if strings.HasPrefix(w.mode, "@") || strings.HasPrefix(g.mode, "@") {
					// The reader makes the first name in depth-first order
					// the primary; the dumpfile may name another.
					continue
				}
				if w.opaque {
					g.nxattrs = w.nxattrs // lost in v1 images, see dumpSummary
				}
				if w.mode != g.mode || w.payload != g.payload || w.digest != g.digest || w.nxattrs != g.nxattrs || w.content != g.content {
					t.Errorf("%q: image %+v, dump %+v", p, g, w)
				}
				if w.size != g.size && !strings.HasPrefix(w.mode, "40") && (strings.HasPrefix(w.mode, "10") || strings.HasPrefix(w.mode, "12")) {
					t.Errorf("%q: size %s, dump %s", p, g.size, w.size)
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%q in the image tree but not in the dump", p)
				}
			}
		})
	}
}

// TestReaderCorrupt checks that damaged images give ErrCorrupt (or
// ErrUnsupported) and never panic.
func TestReaderCorrupt(t *testing.T) {
	data := gunzipFile(t, genImages(t)[0])
	set32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte {
			b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
			return b
		}
	}
	tests := []struct {
		name   string
		mangle func([]byte) []byte
	}{
		{"empty", func(b []byte) []byte { return nil }},
		{"truncated superblock", func(b []byte) []byte { return b[:1100] }},
		{"composefs magic", set32(0, 1)},
		{"erofs magic", set32(1024, 1)},
		{"meta blkaddr beyond end", set32(1024+40, 1<<30)},
		{"root nid beyond end", func(b []byte) []byte { b[1024+14], b[1024+15] = 0xff, 0xff; return b }},
		{"truncated to one block", func(b []byte) []byte { return b[:4096] }},
		{"root inode garbage", func(b []byte) []byte {
			for i := 1152; i < 1152+64; i++ {
				b[i] = 0xff
			}
			return b
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mangle(append([]byte(nil), data...))
			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err == nil {
				_, err = img.Tree()
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			t.Log(err)
		})
	}
}

// TestReaderHostileDirents patches directory entries of a small image:
// a subdirectory entry pointing back at the root (a cycle), two entries
// naming one directory, and an entry pointing outside the image must all
// fail with ErrCorrupt.
func TestReaderHostileDirents(t *testing.T) {
	const dump = "/ 0 40755 2 0 0 0 0.0 - - -\n" +
		"/a 0 40755 2 0 0 0 0.0 - - -\n" +
		"/b 0 40755 2 0 0 0 0.0 - - -\n" +
		"/f 5 100644 1 0 0 0 0.0 - hello -\n"
	src, err := ParseDump(strings.NewReader(dump), ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, src, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	base := buf.Bytes()
	img, err := Open(bytes.NewReader(base), int64(len(base)))
	if err != nil {
		t.Fatal(err)
	}
	ri, err := img.inode(img.rootNid)
	if err != nil {
		t.Fatal(err)
	}
	// The root (with its 256 whiteout stubs) fits one directory block.
	start := ri.tailOff()
	if ri.layout == rdLayoutFlatPlain && ri.size <= rdBlockSize {
		start = int64(ri.iu) * rdBlockSize
	} else if ri.layout != rdLayoutFlatInline {
		t.Fatalf("root directory layout %d, size %d", ri.layout, ri.size)
	}
	ents, err := img.dirents(ri)
	if err != nil {
		t.Fatal(err)
	}
	nidOff := func(name string) (int64, uint64) {
		for i, e := range ents {
			if e.name == name {
				return start + int64(i)*rdDirentSize, e.nid
			}
		}
		t.Fatalf("no entry %q", name)
		return 0, 0
	}
	aOff, aNid := nidOff("a")
	bOff, _ := nidOff("b")
	fOff, _ := nidOff("f")
	put := func(b []byte, off int64, nid uint64) []byte {
		binary.LittleEndian.PutUint64(b[off:], nid)
		return b
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"cycle", put(append([]byte(nil), base...), aOff, img.rootNid)},
		{"directory named twice", put(append([]byte(nil), base...), bOff, aNid)},
		{"nid outside the image", put(append([]byte(nil), base...), fOff, 1<<40)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Open(bytes.NewReader(tc.data), int64(len(tc.data)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = img.Tree()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			t.Log(err)
			// The fs.FS view: a walk ends, reporting the damage (for a
			// cycle, at a/ inside a/: the root reached again).
			var walkErr error
			visits := 0
			fs.WalkDir(img, ".", func(p string, d fs.DirEntry, err error) error {
				if visits++; visits > 1000 {
					return fmt.Errorf("walk does not end (at %s)", p)
				}
				if err != nil && walkErr == nil {
					walkErr = err
				}
				return nil
			})
			if visits > 1000 {
				t.Fatalf("fs.WalkDir visited over 1000 entries of a 4-entry image")
			}
			if tc.name == "cycle" && !errors.Is(walkErr, ErrCorrupt) {
				t.Errorf("fs.WalkDir: first error %v, want ErrCorrupt", walkErr)
			}
		})
	}
	// Unpatched, it reads.
	if _, err := img.Tree(); err != nil {
		t.Fatal(err)
	}
}
