package testutil

import (
	"strings"
	"sync"
	"testing"
)

// TestLockedBuffer writes from several goroutines while reading (the race
// detector checks the locking) and checks that nothing is lost and Reset
// empties it.
func TestLockedBuffer(t *testing.T) {
	var b LockedBuffer
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				b.Write([]byte("x"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("x", 400) {
		t.Fatalf("String() = %d bytes, want 400", len(got))
	}
	b.Reset()
	if got := b.String(); got != "" {
		t.Fatalf("after Reset: %q", got)
	}
}
