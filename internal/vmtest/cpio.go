package vmtest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// cpioWriter writes a "newc" (SVR4, no checksum) cpio archive, the format
// the kernel unpacks as an initramfs. Errors are sticky.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

// errCpioName is returned for an entry name that is empty, absolute or
// climbs out of the archive.
var errCpioName = errors.New("vmtest: bad cpio entry name")

func newCpioWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1000} }

// Mode bits of the cpio header (the st_mode file-type bits).
const (
	cpioDir     = 0o040000
	cpioRegular = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

func (c *cpioWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// header writes one entry header and its name; size bytes of data must follow.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	if name != "TRAILER!!!" {
		clean := path.Clean(name)
		if name == "" || strings.HasPrefix(name, "/") || clean != name || clean == "." || strings.HasPrefix(clean, "../") || clean == ".." {
			c.err = fmt.Errorf("%w: %q", errCpioName, name)
			return
		}
	}
	if size < 0 || size > 0xffffffff {
		c.err = fmt.Errorf("vmtest: cpio entry %q: size %d out of range", name, size)
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(h))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) {
	c.header(name, cpioDir|uint32(perm.Perm()), 0, 0, 0)
}

// File adds a regular file whose size bytes are read from r.
func (c *cpioWriter) File(name string, perm fs.FileMode, size int64, r io.Reader) {
	c.header(name, cpioRegular|uint32(perm.Perm()), size, 0, 0)
	if c.err != nil {
		return
	}
	n, err := io.CopyN(c.w, r, size)
	c.off += n
	if err != nil {
		c.err = fmt.Errorf("vmtest: cpio entry %q: %w", name, err)
		return
	}
	c.pad()
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, cpioSymlink|0o777, int64(len(target)), 0, 0)
	c.write([]byte(target))
	c.pad()
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) {
	c.header(name, cpioCharDev|uint32(perm.Perm()), 0, major, minor)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}
