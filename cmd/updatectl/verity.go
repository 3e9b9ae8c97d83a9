package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/twinroot/twinroot/verity"
)

// newVerityCmd is the "verity" verb group: digest, enable, measure.
func newVerityCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verity",
		Short: "Compute, enable and measure fs-verity file digests",
		Long: `The verity verbs work on fs-verity file digests: SHA-256 (default) or SHA-512,
4096-byte blocks, no salt; the same digests as fsverity-utils and the kernel.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newVerityDigestCmd(a), newVerityEnableCmd(a), newVerityMeasureCmd(a))
	return cmd
}

// hashAlgFlag adds --hash-alg to cmd and returns a parser for its value.
func hashAlgFlag(cmd *cobra.Command) func() (verity.Algorithm, error) {
	s := cmd.Flags().String("hash-alg", "sha256", "hash algorithm: sha256 or sha512")
	return func() (verity.Algorithm, error) {
		alg, err := verity.ParseAlgorithm(*s)
		if err != nil {
			return 0, &exitError{code: exitUsage, err: fmt.Errorf("--hash-alg: %w", err)}
		}
		return alg, nil
	}
}

// operandsFailed is the silent error of a verb that printed its own
// per-operand errors.
func operandsFailed(failed, total int) error {
	return &exitError{code: exitFailure, silent: true, err: fmt.Errorf("%d of %d files failed", failed, total)}
}

func newVerityDigestCmd(a *app) *cobra.Command {
	var jobs int
	cmd := &cobra.Command{
		Use:   "digest [--hash-alg sha256|sha512] FILE...",
		Short: "Print the fs-verity digest of files",
		Long: `Print the fs-verity digest of each FILE as "sha256:<hex> FILE", the format of
"fsverity digest", in argument order. Nothing needs fs-verity support: the
digest is computed in user space. Files are hashed in parallel (--jobs), and a
large file is hashed on all cores. A FILE that cannot be hashed (missing, not a
regular file, unreadable) gets one error line on stderr, the other files are
still hashed, and the exit code is 1.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
	}
	alg := hashAlgFlag(cmd)
	cmd.Flags().IntVarP(&jobs, "jobs", "j", runtime.GOMAXPROCS(0), "files hashed at the same time")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		alg, err := alg()
		if err != nil {
			return err
		}
		if jobs < 1 {
			return &exitError{code: exitUsage, err: fmt.Errorf("--jobs must be at least 1, not %d", jobs)}
		}
		return digestFiles(cmd.Context(), a, args, alg, jobs)
	}
	return cmd
}

// digestFiles hashes paths on a pool of jobs workers and prints the
// results in argument order as they become available.
func digestFiles(ctx context.Context, a *app, paths []string, alg verity.Algorithm, jobs int) error {
	type result struct {
		d    verity.Digest
		err  error
		done chan struct{}
	}
	results := make([]result, len(paths))
	for i := range results {
		results[i].done = make(chan struct{})
	}
	var next atomic.Int64
	for range min(jobs, len(paths)) {
		go func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(paths) {
					return
				}
				r := &results[i]
				if err := ctx.Err(); err != nil {
					r.err = err
				} else {
					r.d, r.err = verity.DigestFile(ctx, paths[i], alg)
				}
				close(r.done)
			}
		}()
	}
	out := bufio.NewWriterSize(a.stdout, 64<<10)
	failed := 0
	for i := range results {
		r := &results[i]
		<-r.done
		if r.err != nil {
			if ctx.Err() != nil && errors.Is(r.err, ctx.Err()) {
				_ = out.Flush()
				return &exitError{code: exitFailure, err: fmt.Errorf("verity digest: %w", ctx.Err())}
			}
			if err := out.Flush(); err != nil {
				return fmt.Errorf("verity digest: writing output: %w", err)
			}
			fmt.Fprintf(a.stderr, "updatectl: verity digest: %v\n", r.err)
			failed++
			continue
		}
		fmt.Fprintf(out, "%s %s\n", r.d, paths[i])
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("verity digest: writing output: %w", err)
	}
	if failed > 0 {
		return operandsFailed(failed, len(paths))
	}
	return nil
}

func newVerityEnableCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enable [--hash-alg sha256|sha512] FILE...",
		Short: "Enable fs-verity on files",
		Long: `Enable fs-verity on each FILE (FS_IOC_ENABLE_VERITY) with 4096-byte blocks and
no salt. The file then becomes read-only for good and the kernel verifies
every read. No writable descriptor of the file may be open. Needs a kernel
with fs-verity and a filesystem with the verity feature (ext4, f2fs, btrfs).
Prints nothing on success; on failure, one error line per FILE and exit code 1.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
	}
	alg := hashAlgFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		alg, err := alg()
		if err != nil {
			return err
		}
		failed := 0
		for _, path := range args {
			if err := enableFile(path, alg); err != nil {
				fmt.Fprintf(a.stderr, "updatectl: verity enable: %v\n", err)
				failed++
			}
		}
		if failed > 0 {
			return operandsFailed(failed, len(args))
		}
		return nil
	}
	return cmd
}

func enableFile(path string, alg verity.Algorithm) error {
	f, err := verity.OpenRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return verity.Enable(f, alg)
}

func newVerityMeasureCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "measure FILE...",
		Short: "Print the fs-verity digest the kernel holds for files",
		Long: `Print the fs-verity digest of each FILE as the kernel measures it
(FS_IOC_MEASURE_VERITY), as "sha256:<hex> FILE" like "fsverity measure". A FILE
without fs-verity, or on a kernel or filesystem without it, gets one error
line on stderr and the exit code is 1.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := 0
			for _, path := range args {
				d, err := measureFile(path)
				if err != nil {
					fmt.Fprintf(a.stderr, "updatectl: verity measure: %v\n", err)
					failed++
					continue
				}
				fmt.Fprintf(a.stdout, "%s %s\n", d, path)
			}
			if failed > 0 {
				return operandsFailed(failed, len(args))
			}
			return nil
		},
	}
}

func measureFile(path string) (verity.Digest, error) {
	f, err := verity.OpenRegular(path)
	if err != nil {
		return verity.Digest{}, err
	}
	defer f.Close()
	return verity.Measure(f)
}
