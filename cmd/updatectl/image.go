package main

import "github.com/spf13/cobra"

// newImageCmd is a placeholder until the image verbs land.
func newImageCmd(a *app) *cobra.Command {
	return &cobra.Command{Use: "image", Short: "(image: not implemented yet)", Hidden: true}
}
