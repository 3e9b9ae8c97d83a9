package main

import "github.com/spf13/cobra"

// newVerityCmd is a placeholder until the verity verbs land.
func newVerityCmd(a *app) *cobra.Command {
	return &cobra.Command{Use: "verity", Short: "(verity: not implemented yet)", Hidden: true}
}
