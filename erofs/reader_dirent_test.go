package erofs

import (
	"encoding/binary"
	"strings"
	"testing"
)

// dirBlock builds a directory block holding names (nids 1, 2, ...).
func dirBlock(names ...string) []byte {
	le := binary.LittleEndian
	head := make([]byte, len(names)*rdDirentSize)
	var tail []byte
	for i, n := range names {
		e := head[i*rdDirentSize:]
		le.PutUint64(e[0:], uint64(i+1))
		le.PutUint16(e[8:], uint16(len(head)+len(tail)))
		e[10] = 1
		tail = append(tail, n...)
	}
	return append(head, tail...)
}

func TestParseDirBlockNames(t *testing.T) {
	tests := []struct {
		names []string
		err   string // "" = parses
	}{
		{[]string{".", "..", "etc", "passwd"}, ""},
		{[]string{".", "..", "a/b"}, "holds '/'"},
		{[]string{".", "..", "../../x", "y"}, "holds '/'"},
		{[]string{".", "..", "a\x00b", "c"}, "holds '/' or NUL"},
		{[]string{".", "..", "last\x00\x00"}, ""}, // NUL padding ends the last name
	}
	for _, tt := range tests {
		got, err := rdParseDirBlock(dirBlock(tt.names...))
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%q: %v", tt.names, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: err %v, want %q", tt.names, err, tt.err)
		case tt.err == "" && len(got) != len(tt.names):
			t.Errorf("%q: %d entries", tt.names, len(got))
		}
	}
}
