package objstore

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

func benchmarkAddObject(b *testing.B, size int) {
	ctx := context.Background()
	s := newTestStore(b, Options{})
	st, err := s.NewStaging(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Abort()
	data := content(1, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// A different object each time: the first 8 bytes are the counter.
		copy(data, fmt.Sprintf("%08x", i))
		if _, _, err := st.AddObject(ctx, bytes.NewReader(data), int64(size)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAddObject4K(b *testing.B) { benchmarkAddObject(b, 4096) }
func BenchmarkAddObject1M(b *testing.B) { benchmarkAddObject(b, 1<<20) }

// BenchmarkRecommit commits, over and over, an image of 1000 objects that
// are all present already (the cost of a second image sharing its objects).
func BenchmarkRecommit(b *testing.B) {
	ctx := context.Background()
	s := newTestStore(b, Options{})
	for b.Loop() {
		if _, err := poolImportFixed(ctx, s, span(0, poolSize), true); err != nil {
			b.Fatal(err)
		}
	}
}
