// Package discovery finds the backends of a server. Each source is a Caddy
// module in the namespace between.discovery (inline key "kind") that implements
// Source (and optionally Watcher). The Runner, shared by all sources, applies the
// common settings: interval, timeout and failpolicy.
package discovery

import (
	"context"
	"fmt"
	"sync/atomic"
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
	// How often to fetch the list again. "0" (the default) fetches once
	// (watch-based kinds keep watching). A failed fetch is retried sooner:
	// after 1s, then 2s, 4s ... up to the interval (up to 30s with
	// interval "0", until a fetch succeeds).
	Interval caddy.Duration `json:"interval,omitempty"`
	// Time limit of one fetch. "0" (the default) = the kind's default: 5s,
	// or 3s for exec. A fetch is never unbounded.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// What to do when a fetch fails: "keeplast" (default) keeps the last good
	// list; "setempty" removes every backend until a fetch succeeds.
	FailPolicy string `json:"failpolicy,omitempty"`

	// kindTimeout is the kind's own default for Timeout "0", set by the
	// kind's Provision; 0 = DefaultTimeout.
	kindTimeout time.Duration
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

// DefaultTimeout is the fetch time limit when a source sets none and its
// kind has no default of its own.
const DefaultTimeout = 5 * time.Second

// FetchTimeout returns the effective time limit of one fetch: Timeout, or the
// kind's default when it is not set (DefaultTimeout unless the kind has its
// own, like exec's 3s).
func (c *Common) FetchTimeout() time.Duration {
	switch {
	case c.Timeout > 0:
		return time.Duration(c.Timeout)
	case c.kindTimeout > 0:
		return c.kindTimeout
	}
	return DefaultTimeout
}

// Retry delays after a failed fetch: the first retry waits RetryFirst, each
// further one twice as long, up to the interval, or up to RetryMax when the
// interval is 0 (fetch once) and no fetch has succeeded yet.
const (
	RetryFirst = time.Second
	RetryMax   = 30 * time.Second
)

// Runner drives one Source for one server.
type Runner struct {
	// Source is the configured discovery module.
	Source Configured
	// Update receives every successful list (and the empty list under
	// failpolicy setempty). It is called from the Runner's goroutine only.
	Update func([]backend.Backend)
	// OnError is told about every failed fetch and every broken watch (for
	// logs); may be nil.
	OnError func(error)
	// OnFetch is told about every fetch's result (nil error = success); may be nil.
	OnFetch func(err error)

	fetchesOK, fetchesFailed, watchErrors atomic.Uint64

	// retryFirst and retryMax replace RetryFirst and RetryMax when set (tests).
	retryFirst, retryMax time.Duration
}

// Counts are a Runner's totals since it was created.
type Counts struct {
	// FetchesOK counts fetches that returned a list in time.
	FetchesOK uint64
	// FetchesFailed counts fetches that failed or timed out. A fetch cut
	// short because the Runner was stopped is not counted.
	FetchesFailed uint64
	// WatchErrors counts watches (of Watcher sources) that ended with an
	// error.
	WatchErrors uint64
}

// Counts returns the Runner's totals. It is safe to call while Run runs.
func (r *Runner) Counts() Counts {
	return Counts{
		FetchesOK:     r.fetchesOK.Load(),
		FetchesFailed: r.fetchesFailed.Load(),
		WatchErrors:   r.watchErrors.Load(),
	}
}

// retryDelay is the wait before the n-th retry in a row (n from 1): the first
// delay doubled n-1 times, never more than limit.
func (r *Runner) retryDelay(n int, limit time.Duration) time.Duration {
	d := RetryFirst
	if r.retryFirst > 0 {
		d = r.retryFirst
	}
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Run fetches at once, then every interval (or watches, for Watchers), until
// ctx ends. A failed fetch is retried with growing delays (see RetryFirst);
// with interval 0 and no Watcher, Run returns after the first success.
func (r *Runner) Run(ctx context.Context) {
	set := r.Source.Settings()
	timeout := set.FetchTimeout()
	interval := time.Duration(set.Interval)
	// the longest wait between retries
	limit := interval
	if limit <= 0 {
		limit = RetryMax
		if r.retryMax > 0 {
			limit = r.retryMax
		}
	}
	failures := 0 // failed fetches in a row
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
		if err != nil {
			r.fetchesFailed.Add(1)
			failures++
		} else {
			r.fetchesOK.Add(1)
			failures = 0
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
		broken := 0 // watches in a row that ended without delivering a list
		for ctx.Err() == nil {
			var delivered atomic.Bool
			err := w.Watch(ctx, func(l []backend.Backend) {
				delivered.Store(true)
				r.Update(l)
			})
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				r.watchErrors.Add(1)
				if r.OnError != nil {
					r.OnError(fmt.Errorf("watch: %w", err))
				}
			}
			if delivered.Load() {
				broken = 0
			}
			broken++
			if !sleep(ctx, r.retryDelay(broken, limit)) {
				return
			}
			fetch()
		}
		return
	}
	for {
		var wait time.Duration
		switch {
		case ok && interval <= 0:
			return
		case ok:
			wait = interval
		default:
			wait = r.retryDelay(failures, limit)
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
