//go:build ignore

// verity_tool is bench/verity.sh's helper, run with `go run`:
//
//	go run bench/verity_tool.go mkfiles DIR N   create N files of mixed sizes
//	go run bench/verity_tool.go sha256 FILE     plain crypto/sha256 of FILE
//	go run bench/verity_tool.go ratio JSON MAX  summarise a hyperfine --export-json
//	go run bench/verity_tool.go cpu FILE        single-core CPU time, sha256 vs verity
//	go run bench/verity_tool.go pairs N MAX 'CMD A' 'CMD B'
//	                                            interleaved wall-time ratio B/A
//
// mkfiles draws sizes log-uniformly from 0 to 1 MiB (most files are a few
// KiB, as in an OS image; about 75 KiB on average) with random contents,
// in 100 subdirectories. sha256 reads with 1 MiB buffers on one goroutine:
// the single-core baseline for `GOMAXPROCS=1 updatectl verity digest`.
// ratio prints each command's mean, min and CPU time, the ratios of the
// second command's times to the first's and whether they meet a target.
// cpu compares, on one locked thread with GOMAXPROCS=1, the thread CPU time
// (user+system, best of 5) of crypto/sha256 over FILE and of
// verity.DigestFile: a single-core comparison that other processes on a
// busy machine barely disturb. pairs runs A and B alternately N times
// (after one warm-up each; commands split on spaces, output discarded) and
// prints the median and the best of the per-pair ratios B/A: the load
// other processes put on the machine drifts slowly, so it largely cancels
// within a pair.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twinroot/twinroot/verity"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "verity_tool:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "mkfiles":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return mkfiles(args[1], n)
	case len(args) == 2 && args[0] == "sha256":
		return sum(args[1])
	case len(args) == 2 && args[0] == "cpu":
		return cpuCompare(args[1])
	case len(args) == 5 && args[0] == "pairs":
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		limit, err := strconv.ParseFloat(args[2], 64)
		if err != nil {
			return err
		}
		return pairs(n, limit, strings.Fields(args[3]), strings.Fields(args[4]))
	case len(args) == 3 && args[0] == "ratio":
		limit, err := strconv.ParseFloat(args[2], 64)
		if err != nil {
			return err
		}
		return ratio(args[1], limit)
	}
	return fmt.Errorf("usage: mkfiles DIR N | sha256 FILE | ratio JSON MAX | cpu FILE | pairs N MAX 'CMD A' 'CMD B'")
}

// ratio reads hyperfine's JSON export of two commands, A then B, prints
// B/A for the mean and the min wall time and for the CPU time, and whether
// the ratios are at most limit. On a busy machine the min is the better
// estimate of the uncontended time.
func ratio(path string, limit float64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc struct {
		Results []struct {
			Command string
			Mean    float64
			Stddev  float64
			Min     float64
			User    float64
			System  float64
		}
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Results) != 2 {
		return fmt.Errorf("%s: %d results, want 2", path, len(doc.Results))
	}
	for _, r := range doc.Results {
		cmd := r.Command
		if len(cmd) > 60 {
			cmd = cmd[:57] + "..."
		}
		fmt.Printf("  %-60s mean %6.3f s ± %5.3f  min %6.3f s  cpu %6.3f s\n", cmd, r.Mean, r.Stddev, r.Min, r.User+r.System)
	}
	a, z := doc.Results[0], doc.Results[1]
	verdict := func(r float64) string {
		if r <= limit {
			return "met"
		}
		return "NOT met"
	}
	rMean, rMin := z.Mean/a.Mean, z.Min/a.Min
	fmt.Printf("  ratio second/first: mean %.3f (%s)  min %.3f (%s)  cpu %.3f  [target <= %.3f]\n",
		rMean, verdict(rMean), rMin, verdict(rMin), (z.User+z.System)/(a.User+a.System), limit)
	return nil
}

func mkfiles(dir string, n int) error {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	var total int64
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("%02d", i%100))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		size := int(math.Exp2(rng.Float64()*20)) - 1
		for j := 0; j < size; j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < size; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), buf[:size], 0o644); err != nil {
			return err
		}
		total += int64(size)
	}
	fmt.Printf("%d files, %d bytes\n", n, total)
	return nil
}

func pairs(n int, limit float64, a, b []string) error {
	timed := func(argv []string) (time.Duration, error) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w", argv[0], err)
		}
		return time.Since(start), nil
	}
	for _, argv := range [][]string{a, b} { // warm-up
		if _, err := timed(argv); err != nil {
			return err
		}
	}
	var ratios []float64
	var ta, tb []time.Duration
	for range n {
		da, err := timed(a)
		if err != nil {
			return err
		}
		db, err := timed(b)
		if err != nil {
			return err
		}
		ta, tb = append(ta, da), append(tb, db)
		ratios = append(ratios, db.Seconds()/da.Seconds())
	}
	slices.Sort(ratios)
	slices.Sort(ta)
	slices.Sort(tb)
	med := ratios[len(ratios)/2]
	verdict := "met"
	if med > limit {
		verdict = "NOT met"
	}
	fmt.Printf("  interleaved, %d pairs: A median %.3f s, B median %.3f s; ratio B/A median %.3f (%s), best %.3f [target <= %.3f]\n",
		n, ta[n/2].Seconds(), tb[n/2].Seconds(), med, verdict, ratios[0], limit)
	return nil
}

func cpuCompare(path string) error {
	runtime.GOMAXPROCS(1)
	runtime.LockOSThread()
	threadCPU := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	best := [2]time.Duration{time.Hour, time.Hour}
	for range 5 {
		for i, f := range []func() error{
			func() error { return sha256File(path, io.Discard) },
			func() error {
				_, err := verity.DigestFile(context.Background(), path, verity.SHA256)
				return err
			},
		} {
			start := threadCPU()
			if err := f(); err != nil {
				return err
			}
			best[i] = min(best[i], threadCPU()-start)
		}
	}
	mbs := func(d time.Duration) float64 { return float64(fi.Size()) / 1e6 / d.Seconds() }
	share := best[0].Seconds() / best[1].Seconds()
	verdict := "met"
	if share < 0.9 {
		verdict = "NOT met"
	}
	fmt.Printf("  crypto/sha256:     %v CPU, %.0f MB/s\n", best[0], mbs(best[0]))
	fmt.Printf("  verity.DigestFile: %v CPU, %.0f MB/s\n", best[1], mbs(best[1]))
	fmt.Printf("  single-core throughput: %.1f %% of crypto/sha256 [target >= 90 %%: %s]\n", 100*share, verdict)
	return nil
}

func sum(path string) error {
	return sha256File(path, os.Stdout)
}

func sha256File(path string, out io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, make([]byte, 1<<20)); err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, hex.EncodeToString(h.Sum(nil)), path)
	return err
}
