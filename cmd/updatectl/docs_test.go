package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocs: man pages and completions come from the command definitions,
// so every verb and flag is in them.
func TestDocs(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := storeCLI(t, "__docs", dir); code != 0 {
		t.Fatalf("__docs: exit %d: %s", code, errOut)
	}
	for file, words := range map[string][]string{
		"man/man1/updatectl.1":          {"updatectl-upgrade(1)", "updatectl-status(1)", "--sysroot", "--no-wait"},
		"man/man1/updatectl-upgrade.1":  {"--check", "--download-only", "--apply", "77"},
		"man/man1/updatectl-rollback.1": {"toggles back"},
		"completions/updatectl.bash":    {"__start_updatectl"},
		"completions/_updatectl":        {"#compdef updatectl"},
		"completions/updatectl.fish":    {"complete -c updatectl"},
	} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Error(err)
			continue
		}
		for _, w := range words {
			if !strings.Contains(strings.ReplaceAll(string(b), `\-`, "-"), w) {
				t.Errorf("%s lacks %q", file, w)
			}
		}
	}
}

// TestJournalLogs: under the journal ($JOURNAL_STREAM), log lines carry no
// timestamp of their own.
func TestJournalLogs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte(strings.Repeat("x", 1000)), 0o644)
	logs := func() string {
		_, _, errOut := storeCLI(t, "--log-level", "debug", "--store", filepath.Join(dir, "store"), "store", "import", src)
		return errOut
	}
	storeCLI(t, "--store", filepath.Join(dir, "store"), "store", "init")
	if out := logs(); !strings.Contains(out, "time=") {
		t.Fatalf("no log line to look at: %q", out)
	}
	t.Setenv("JOURNAL_STREAM", "8:12345")
	if out := logs(); strings.Contains(out, "time=") || !strings.Contains(out, "level=DEBUG") {
		t.Errorf("journal log lines: %q", out)
	}
}
