package boot

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxEntrySize bounds an entry file; systemd-boot reads whole files and real
// entries are a few hundred bytes.
const MaxEntrySize = 64 << 10

// Field is one "key value" line of an entry.
type Field struct {
	Key   string
	Value string
}

// Entry is a Boot Loader Specification type #1 entry: its lines in file
// order. Keys may repeat (initrd, options); keys the package does not know
// are kept, in order. Comments and blank lines are not kept.
type Entry struct {
	Fields []Field
}

// ParseEntry parses an entry file. A line is a key, then whitespace, then
// the value (leading and trailing whitespace removed); lines starting with
// '#' and blank lines are skipped. The input must be UTF-8 without NUL bytes
// and at most MaxEntrySize bytes; errors wrap ErrSyntax and name the line.
func ParseEntry(data []byte) (Entry, error) {
	if len(data) > MaxEntrySize {
		return Entry{}, fmt.Errorf("%w: entry of %d bytes (at most %d)", ErrSyntax, len(data), MaxEntrySize)
	}
	if !utf8.Valid(data) {
		return Entry{}, fmt.Errorf("%w: entry is not UTF-8", ErrSyntax)
	}
	var e Entry
	for n, line := range bytes.Split(data, []byte("\n")) {
		if bytes.IndexByte(line, 0) >= 0 {
			return Entry{}, fmt.Errorf("%w: line %d holds a NUL byte", ErrSyntax, n+1)
		}
		s := strings.Trim(string(line), " \t\r\v\f")
		if s == "" || s[0] == '#' {
			continue
		}
		k, v, _ := strings.Cut(s, " ")
		if i := strings.IndexAny(k, "\t\v\f\r"); i >= 0 {
			k, v = s[:i], s[i+1:]
		}
		v = strings.Trim(v, " \t\r\v\f")
		e.Fields = append(e.Fields, Field{Key: k, Value: v})
	}
	return e, nil
}

// Marshal prints the entry, one "key value" line per field. For any e that
// ParseEntry returned, ParseEntry(e.Marshal()) equals e.
func (e Entry) Marshal() []byte {
	var b bytes.Buffer
	for _, f := range e.Fields {
		b.WriteString(f.Key)
		if f.Value != "" {
			b.WriteByte(' ')
			b.WriteString(f.Value)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Get returns the value of the first field named key.
func (e Entry) Get(key string) (string, bool) {
	for _, f := range e.Fields {
		if f.Key == key {
			return f.Value, true
		}
	}
	return "", false
}

// All returns the values of all fields named key, in order.
func (e Entry) All(key string) []string {
	var out []string
	for _, f := range e.Fields {
		if f.Key == key {
			out = append(out, f.Value)
		}
	}
	return out
}

// Options returns the kernel command line: all options lines joined by a
// space, as systemd-boot does.
func (e Entry) Options() string { return strings.Join(e.All("options"), " ") }

// EntryName is a parsed entry file name "<base>[+LEFT[-DONE]].conf".
type EntryName struct {
	// Base is the name without the counter and without ".conf".
	Base string
	// Counted is true when the name carries a boot counter.
	Counted bool
	// Left is the number of tries left, Done the tries made (Counted only).
	Left, Done int
}

// maxCount bounds a counter; systemd-boot uses unsigned 64-bit values but
// nobody counts past a handful of tries.
const maxCount = 1 << 20

// ParseEntryName parses an entry file name. A "+..." suffix that is not a
// well-formed counter is part of the base, as systemd-boot treats it.
func ParseEntryName(file string) (EntryName, error) {
	stem, ok := strings.CutSuffix(file, ".conf")
	if !ok || stem == "" || strings.ContainsAny(file, "/\\\x00") {
		return EntryName{}, fmt.Errorf("%w: entry file name %q: want <name>[+LEFT[-DONE]].conf", ErrSyntax, file)
	}
	i := strings.LastIndexByte(stem, '+')
	if i <= 0 {
		return EntryName{Base: stem}, nil
	}
	left, done, hasDone := strings.Cut(stem[i+1:], "-")
	l, okL := parseCount(left)
	d, okD := 0, true
	if hasDone {
		d, okD = parseCount(done)
	}
	if !okL || !okD {
		return EntryName{Base: stem}, nil
	}
	return EntryName{Base: stem[:i], Counted: true, Left: l, Done: d}, nil
}

func parseCount(s string) (int, bool) {
	if s == "" || len(s) > 7 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n <= maxCount
}

// String formats the file name: "+LEFT" while no try was made, then
// "+LEFT-DONE" as systemd-boot writes it.
func (n EntryName) String() string {
	if !n.Counted {
		return n.Base + ".conf"
	}
	if n.Done == 0 {
		return fmt.Sprintf("%s+%d.conf", n.Base, n.Left)
	}
	return fmt.Sprintf("%s+%d-%d.conf", n.Base, n.Left, n.Done)
}

// Exhausted reports whether the entry has a counter with no tries left:
// systemd-boot sorts it after every other entry.
func (n EntryName) Exhausted() bool { return n.Counted && n.Left == 0 }

// Blessed reports whether the entry has no counter: it booted successfully
// (or was never counted).
func (n EntryName) Blessed() bool { return !n.Counted }
