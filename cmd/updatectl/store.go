package main

import "github.com/spf13/cobra"

// newStoreCmd is a placeholder until the store verbs land.
func newStoreCmd(a *app) *cobra.Command {
	return &cobra.Command{Use: "store", Short: "(store: not implemented yet)", Hidden: true}
}
