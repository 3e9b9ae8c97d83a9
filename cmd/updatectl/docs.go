package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newDocsCmd is the hidden "__docs DIR" verb that "make build" runs: man
// pages (DIR/man/man1) and shell completions (DIR/completions) generated
// from the command definitions, so they cannot drift from the flags.
func newDocsCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "__docs DIR",
		Short:  "Write man pages and shell completions under DIR",
		Hidden: true,
		Args:   usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeDocs(root, args[0])
		},
	}
}

func writeDocs(root *cobra.Command, dir string) error {
	man := filepath.Join(dir, "man", "man1")
	comp := filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root.DisableAutoGenTag = true // reproducible output: no generation date
	hdr := &doc.GenManHeader{Title: "UPDATECTL", Section: "1", Source: "twinroot " + version, Manual: "twinroot manual"}
	if err := doc.GenManTree(root, hdr, man); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	files := map[string]func(string) error{
		"updatectl.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_updatectl":     root.GenZshCompletionFile,
		"updatectl.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	}
	for name, gen := range files {
		if err := gen(filepath.Join(comp, name)); err != nil {
			return fmt.Errorf("completion %s: %w", name, err)
		}
	}
	return nil
}
