//go:build ignore

// verity_tool is bench/verity.sh's helper, run with `go run`:
//
//	go run bench/verity_tool.go mkfiles DIR N   create N files of mixed sizes
//	go run bench/verity_tool.go sha256 FILE     plain crypto/sha256 of FILE
//	go run bench/verity_tool.go ratio JSON      summarise a hyperfine --export-json
//
// mkfiles draws sizes log-uniformly from 0 to 1 MiB (most files are a few
// KiB, as in an OS image; about 75 KiB on average) with random contents,
// in 100 subdirectories. sha256 reads with 1 MiB buffers on one goroutine:
// the single-core baseline for `GOMAXPROCS=1 updatectl verity digest`.
// ratio prints each command's mean, min and CPU time, the ratios of the
// second command's times to the first's and whether they meet a target.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
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
	case len(args) == 3 && args[0] == "ratio":
		limit, err := strconv.ParseFloat(args[2], 64)
		if err != nil {
			return err
		}
		return ratio(args[1], limit)
	}
	return fmt.Errorf("usage: mkfiles DIR N | sha256 FILE | ratio JSON MAX")
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

func sum(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, make([]byte, 1<<20)); err != nil {
		return err
	}
	fmt.Println(hex.EncodeToString(h.Sum(nil)), path)
	return nil
}
