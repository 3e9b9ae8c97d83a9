package objstore

import (
	"sync"
	"testing"
	"time"
)

// A steady stream of shared holders of the gc lock (importers whose holds
// overlap, so that gc.lock is never free) must not keep an exclusive taker
// (gc, removal) out: it takes the turnstile, new shared takers queue
// behind it, and it gets the lock once the current holders let go. With
// flock alone it would wait for as long as the stream lasts.
func TestGCLockNotStarved(t *testing.T) {
	s := newTestStore(t, Options{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	sharedRounds := 0
	for i := range 4 {
		l, err := s.gcLock()
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * time.Millisecond) // staggered: the holds overlap
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := l.lockShared(); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(4 * time.Millisecond)
				l.unlock()
				mu.Lock()
				sharedRounds++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // the stream is flowing
	ex, err := s.gcLock()
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	got := make(chan error, 1)
	go func() { got <- ex.lockExclusive() }()
	// The bound is for liveness only: the exclusive lock needs one
	// holder's 4 ms; 30 s means it would otherwise never have come.
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		close(stop)
		wg.Wait()
		t.Fatalf("exclusive gc lock not granted in 30 s while shared holders kept coming (%d shared rounds)", sharedRounds)
	}
	// While it is held, shared takers wait.
	mu.Lock()
	before := sharedRounds
	mu.Unlock()
	time.Sleep(30 * time.Millisecond)
	mu.Lock()
	during := sharedRounds - before
	mu.Unlock()
	ex.unlock()
	close(stop)
	wg.Wait()
	if during > 4 {
		t.Errorf("%d shared rounds completed while the exclusive lock was held", during)
	}
	if sharedRounds == 0 {
		t.Error("the shared holders never ran")
	}
}
