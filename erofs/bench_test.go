package erofs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkWriteCS9 parses and writes the CentOS Stream 9 minimal dumpfile
// (22,010 entries), like `mkcomposefs --from-file`.
func BenchmarkWriteCS9(b *testing.B) {
	path := filepath.Join(upstreamVectorDir(), "cs9-x86_64-minimal.dump.gz")
	if _, err := os.Stat(path); err != nil {
		b.Skipf("vector absent: %v", err)
	}
	input := readMaybeGzip(b, path)
	b.SetBytes(int64(len(input)))
	b.ReportAllocs()
	for b.Loop() {
		root, err := ParseDump(bytes.NewReader(input), ParseOptions{Strict: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := Write(io.Discard, root, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// syntheticDump returns a dumpfile of about n entries: directories of 100
// entries mixing external files, inline files, symlinks and devices, with
// a shared selinux label and a few per-file xattrs.
func syntheticDump(n int) []byte {
	var buf bytes.Buffer
	buf.WriteString("/ 4096 40755 2 0 0 0 1700000000.0 - - - security.selinux=system_u:object_r:root_t:s0\n")
	count := 1
	for d := 0; count < n; d++ {
		fmt.Fprintf(&buf, "/d%06d 4096 40755 2 0 0 0 1700000000.0 - - - security.selinux=system_u:object_r:usr_t:s0\n", d)
		count++
		for f := 0; f < 99 && count < n; f++ {
			switch f % 4 {
			case 0, 1:
				digest := fmt.Sprintf("%02x%062x", (d+f)%256, d*1000+f)
				fmt.Fprintf(&buf, "/d%06d/file-%04d %d 100644 1 0 0 0 1700000000.%d %s/%s - %s security.selinux=system_u:object_r:usr_t:s0\n",
					d, f, 1000+f*37, f, digest[:2], digest[2:], digest)
			case 2:
				fmt.Fprintf(&buf, "/d%06d/inline-%04d 5 100644 1 0 0 0 1700000000.0 - hello - user.tag=%d\n", d, f, f)
			case 3:
				fmt.Fprintf(&buf, "/d%06d/link-%04d 9 120777 1 0 0 0 1700000000.0 ../target - -\n", d, f)
			}
			count++
		}
	}
	return buf.Bytes()
}

// BenchmarkWriteLarge parses and writes a synthetic 1,000,000-entry tree.
// Compare with -benchmem and different sizes (BenchmarkWriteLarge/100k) to
// check that time and memory grow linearly.
func BenchmarkWriteLarge(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			input := syntheticDump(n)
			b.SetBytes(int64(len(input)))
			b.ReportAllocs()
			for b.Loop() {
				root, err := ParseDump(bytes.NewReader(input), ParseOptions{Strict: true})
				if err != nil {
					b.Fatal(err)
				}
				if err := Write(io.Discard, root, WriteOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
