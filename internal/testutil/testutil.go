// Package testutil holds helpers that the tests of several packages share.
package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// Loader loads the Caddy modules whose IDs are its value (a namespace with
// its trailing dot, "between.discovery.") followed by a name, and gives them
// as a T.
type Loader[T any] string

// Load builds the module named name from JSON as Caddy does: strict
// decoding, Provision, Validate. It fails the test if there is no such
// module and returns the first error of decoding, Provision or Validate. The
// context the module is provisioned in ends with the test.
func (l Loader[T]) Load(t testing.TB, name, js string) (T, error) {
	t.Helper()
	var zero T
	info, err := caddy.GetModule(string(l) + name)
	if err != nil {
		t.Fatalf("module %s: %v", name, err)
	}
	mod := info.New()
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(mod); err != nil {
		return zero, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := mod.(caddy.Provisioner).Provision(ctx); err != nil {
		return zero, err
	}
	if err := mod.(caddy.Validator).Validate(); err != nil {
		return zero, err
	}
	return mod.(T), nil
}

// MustLoad is Load that fails the test on error.
func (l Loader[T]) MustLoad(t testing.TB, name, js string) T {
	t.Helper()
	mod, err := l.Load(t, name, js)
	if err != nil {
		t.Fatalf("%s %s: %v", name, js, err)
	}
	return mod
}

// LockedBuffer collects a child process's output: Write (the process's
// stdout and stderr) may run while a test reads it. The zero value is ready.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Reset forgets everything written so far.
func (l *LockedBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}
