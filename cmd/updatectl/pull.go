package main

import "github.com/spf13/cobra"

// newPullCmd is a placeholder until the pull verbs land.
func newPullCmd(a *app) *cobra.Command {
	return &cobra.Command{Use: "pull", Short: "(pull: not implemented yet)", Hidden: true}
}
