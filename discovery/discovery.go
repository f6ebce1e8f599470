// Package discovery finds the backends of a server. Each source is a Caddy
// module in the namespace between.discovery (inline key "kind") that implements
// Source (and optionally Watcher). The Runner, shared by all sources, applies the
// common settings: interval, timeout and failpolicy.
package discovery

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
)

// Source fetches the current backend list once.
type Source interface {
	Fetch(ctx context.Context) ([]backend.Backend, error)
}

// Watcher is implemented by sources that can push changes (blocking queries,
// watches). Watch calls update with every new list until ctx ends or an error
// occurs; the Runner then falls back to Fetch every interval and retries Watch.
type Watcher interface {
	Watch(ctx context.Context, update func([]backend.Backend)) error
}

// Common holds the settings every discovery kind shares. Sources embed it, so
// the fields appear beside the kind's own in JSON.
type Common struct {
	// How often to fetch the list again. "0" (the default) fetches once.
	Interval caddy.Duration `json:"interval,omitempty"`
	// Time limit of one fetch. "0" (the default) = 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// What to do when a fetch fails: "keeplast" (default) keeps the last good
	// list; "setempty" removes every backend until a fetch succeeds.
	FailPolicy string `json:"failpolicy,omitempty"`
}

// Settings returns the common settings; sources get it through embedding.
func (c *Common) Settings() *Common { return c }

// ValidateCommon checks the common fields.
func (c *Common) ValidateCommon() error {
	switch c.FailPolicy {
	case "", "keeplast", "setempty":
	default:
		return fmt.Errorf("failpolicy %q: want keeplast or setempty", c.FailPolicy)
	}
	if c.Interval < 0 {
		return fmt.Errorf("interval %s: must not be negative", time.Duration(c.Interval))
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout %s: must not be negative", time.Duration(c.Timeout))
	}
	return nil
}

// Configured is what a discovery module provides to the Runner.
type Configured interface {
	Source
	Settings() *Common
}

// DefaultTimeout is the fetch time limit when a source sets none.
const DefaultTimeout = 5 * time.Second

// FetchTimeout returns the effective time limit of one fetch: Timeout, or
// DefaultTimeout when it is not set.
func (c *Common) FetchTimeout() time.Duration {
	if c.Timeout > 0 {
		return time.Duration(c.Timeout)
	}
	return DefaultTimeout
}

// Runner drives one Source for one server.
type Runner struct {
	// Source is the configured discovery module.
	Source Configured
	// Update receives every successful list (and the empty list under
	// failpolicy setempty). It is called from the Runner's goroutine only.
	Update func([]backend.Backend)
	// OnError is told about every failed fetch (for logs and metrics); may be nil.
	OnError func(error)
	// OnFetch is told about every fetch's result (nil error = success); may be nil.
	OnFetch func(err error)
}

// Run fetches at once, then every interval (or watches, for Watchers), until
// ctx ends. With interval 0 and no Watcher it fetches until the first success,
// retrying every second, then stops.
func (r *Runner) Run(ctx context.Context) {
	set := r.Source.Settings()
	timeout := set.FetchTimeout()
	interval := time.Duration(set.Interval)
	fetch := func() bool {
		fctx, cancel := context.WithTimeout(ctx, timeout)
		list, err := r.Source.Fetch(fctx)
		timedOut := fctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return false
		}
		if err == nil && timedOut {
			err = fmt.Errorf("fetch timed out after %s", timeout)
		}
		if r.OnFetch != nil {
			r.OnFetch(err)
		}
		if err != nil {
			if r.OnError != nil {
				r.OnError(err)
			}
			if set.FailPolicy == "setempty" {
				r.Update(nil)
			}
			return false
		}
		r.Update(list)
		return true
	}
	ok := fetch()
	if w, isWatcher := r.Source.(Watcher); isWatcher {
		for ctx.Err() == nil {
			err := w.Watch(ctx, r.Update)
			if ctx.Err() != nil {
				return
			}
			if err != nil && r.OnError != nil {
				r.OnError(fmt.Errorf("watch: %w", err))
			}
			wait := interval
			if wait <= 0 {
				wait = time.Second
			}
			if !sleep(ctx, wait) {
				return
			}
			fetch()
		}
		return
	}
	for {
		wait := interval
		if interval <= 0 {
			if ok {
				return
			}
			wait = time.Second
		}
		if !sleep(ctx, wait) {
			return
		}
		ok = fetch()
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
