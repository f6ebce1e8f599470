package discovery

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
)

// backendLines renders a list as backend lines, in its order.
func backendLines(l []backend.Backend) []string {
	out := make([]string, len(l))
	for i := range l {
		out[i] = l[i].String()
	}
	return out
}

// sortedLines renders a list as backend lines, sorted (nil for an empty
// list).
func sortedLines(l []backend.Backend) []string {
	if len(l) == 0 {
		return nil
	}
	out := backendLines(l)
	slices.Sort(out)
	return out
}

// asLines renders a list as backend lines, joined by " | ".
func asLines(l []backend.Backend) string {
	return strings.Join(backendLines(l), " | ")
}

// asSortedLines is asLines of the sorted backend lines.
func asSortedLines(l []backend.Backend) string {
	return strings.Join(sortedLines(l), " | ")
}

// waitList reads updates until one renders (with render, asLines when nil)
// as want, and returns how long that took; when within passes first it fails
// the test, naming what and the last list.
func waitList(t *testing.T, updates <-chan []backend.Backend, render func([]backend.Backend) string, want string, within time.Duration, what string) time.Duration {
	t.Helper()
	if render == nil {
		render = asLines
	}
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	last := "(none)"
	for {
		select {
		case l := <-updates:
			if last = render(l); last == want {
				return time.Since(start)
			}
		case <-deadline.C:
			t.Fatalf("%s: no list %q within %v (last %q)", what, want, within, last)
		}
	}
}

// waitError reads rec's errors until one mentions mention, passing every
// update that comes meanwhile to update; when within passes first it fails
// the test.
func (rec *record) waitError(t *testing.T, mention string, within time.Duration, update func([]backend.Backend)) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		select {
		case err := <-rec.errs:
			if strings.Contains(err.Error(), mention) {
				return
			}
		case l := <-rec.updates:
			update(l)
		case <-deadline.C:
			t.Fatalf("no error mentioning %q within %v", mention, within)
		}
	}
}
