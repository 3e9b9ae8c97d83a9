package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSection(t *testing.T) {
	out := "noise\nE2E-BEGIN status\n{\"a\":1}\nline 2\nE2E-END status\nE2E-STATUS status 3\nE2E-BEGIN x\ny\n"
	tests := []struct {
		name, want string
		code       int
	}{
		{"status", "{\"a\":1}\nline 2", 3},
		{"x", "y\n", -1},    // never ended: the boot was cut
		{"missing", "", -1}, // never started
		{"statu", "", -1},   // a prefix is not a name
	}
	for _, tt := range tests {
		got, code := section(out, tt.name)
		if got != tt.want || code != tt.code {
			t.Errorf("section(%q) = %q, %d; want %q, %d", tt.name, got, code, tt.want, tt.code)
		}
	}
}

func TestParseRC(t *testing.T) {
	tests := []struct {
		out  string
		want int
	}{
		{"E2E-UP 1.0\nE2E-RC 0\n", 0},
		{"E2E-RC 3\nE2E-RC 255 (no step script in fw_cfg)\n", 255},
		{"E2E-UP 1.0\nE2E-MARK cut-start\n", -1},
		{"E2E-RC x\n", -1},
	}
	for _, tt := range tests {
		if got := parseRC(tt.out); got != tt.want {
			t.Errorf("parseRC(%q) = %d, want %d", tt.out, got, tt.want)
		}
	}
}

func TestRelayBytes(t *testing.T) {
	f := filepath.Join(t.TempDir(), "count")
	if err := os.WriteFile(f, []byte("100 20\n5 1\ntorn"), 0o644); err != nil {
		t.Fatal(err)
	}
	if down, conns := relayBytes(f); down != 105 || conns != 2 {
		t.Errorf("relayBytes = %d, %d; want 105, 2", down, conns)
	}
}

func TestStatusAfterWarnings(t *testing.T) {
	out := "E2E-BEGIN status\nlevel=WARN msg=\"staged entries from an earlier boot\"\n" +
		"{\"status\":{\"booted\":{\"id\":\"a.0\",\"image\":{\"version\":\"2\"}}}}\nE2E-END status\nE2E-STATUS status 0\n"
	h, err := status(bootResult{Output: out}, "status")
	if err != nil {
		t.Fatal(err)
	}
	if v := h.Status.Booted.version(); v != "2" {
		t.Errorf("booted version %q, want 2", v)
	}
	if _, err := status(bootResult{Output: "E2E-BEGIN status\nnot json\nE2E-END status\nE2E-STATUS status 0\n"}, "status"); err == nil {
		t.Error("status accepted a section without a JSON document")
	}
}

func TestTimeline(t *testing.T) {
	s := time.Second
	lines := []struct {
		line string
		at   time.Duration
	}{
		{`level=INFO msg="too early" phase=resolve`, 1 * s},
		{"E2E-MARK upgrade-start", 2 * s},
		{`time=2026-12-01T10:00:00Z level=INFO msg="checking docker://r/os:stable" phase=resolve`, 3 * s},
		{`E2E-BEGIN upgrade`, 3 * s},
		{`level=INFO msg="pulling docker://r/os:stable (5 layers, 1 MB)" phase=pull`, 4 * s},
		{`level=INFO msg="pulling again" phase=pull`, 5 * s},
		{`level=INFO msg="staging boot entries: a.0 first" phase=stage`, 7 * s},
		{"E2E-MARK upgrade-done", 8 * s},
		{`level=INFO msg="late" phase=gc`, 9 * s},
	}
	tl := newTimeline("upgrade")
	for _, l := range lines {
		tl.see(l.line, l.at)
	}
	want := []segment{{"start", 1 * s}, {"resolve/checking", 1 * s}, {"pull/pulling", 3 * s}, {"stage/staging", 1 * s}}
	if got := tl.segments(); !slices.Equal(got, want) {
		t.Errorf("segments = %v, want %v", got, want)
	}
	for _, tt := range []struct {
		at   time.Duration
		want string
	}{{1 * s, "before"}, {2 * s, "start"}, {4500 * time.Millisecond, "pull/pulling"}, {7 * s, "stage/staging"}, {8 * s, "after"}} {
		if got := tl.at(tt.at); got != tt.want {
			t.Errorf("at(%v) = %q, want %q", tt.at, got, tt.want)
		}
	}
	if n := phaseOf("E2E-OK level=x phase"); n != "" {
		t.Errorf("phaseOf of a non-log line = %q", n)
	}
}

func TestAimsLearn(t *testing.T) {
	s := time.Second
	var a aims
	a.learn([]segment{{"start", s}, {"pull/pulling", 3 * s}, {"stage/staging", s}})
	// A later trial shows the prune after staging, and a kernel step
	// between pull and stage; known segments keep their first timing.
	a.learn([]segment{{"start", 2 * s}, {"pull/pulling", s}, {"kernel/installing", s}, {"stage/staging", s}, {"gc/removing", 2 * s}})
	var names []string
	for _, x := range a.segs {
		names = append(names, x.name)
	}
	if want := []string{"start", "pull/pulling", "kernel/installing", "stage/staging", "gc/removing"}; !slices.Equal(names, want) {
		t.Errorf("segments %q, want %q", names, want)
	}
	if a.segs[0].dur != s {
		t.Errorf("start's timing changed to %v", a.segs[0].dur)
	}
	a.next = 4
	if got := []string{a.take().name, a.take().name}; !slices.Equal(got, []string{"gc/removing", "start"}) {
		t.Errorf("take in turn: %q", got)
	}
}
